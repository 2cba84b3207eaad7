//! Synthetic CloudTrail: the records behind `trailspike generate`, which
//! tests, the demo and the benchmarks feed to the detector.
//!
//! The generator first builds a small world: accounts, and identities with
//! habits (hourly rate, daily rhythm, favourite API calls, user agent,
//! address). It then walks event time one epoch-aligned hour at a time:
//! it draws each identity's call count for the hour, adds the planned
//! spikes, spreads the calls uniformly over the hour's seconds and writes
//! one record per call.
//!
//! Invariants:
//! - One ChaCha8 stream seeded by `seed` drives everything in a fixed
//!   order, and nothing reads the clock or iterates a hash map: the same
//!   arguments give the same bytes, and `limit = N` gives a prefix of the
//!   unlimited output.
//! - Records leave in event-time order, except the `disorder` fraction,
//!   each of which lies at most `disorder_secs` behind every earlier record
//!   and never before `start`.
//! - `InjectedSpike::calls` is counted from what was written: the ARN's
//!   `AwsApiCall` records whose `eventTime` falls in the spike hour. A spike
//!   is reported only if its whole hour was written.
//! - A spike clears the detector's rule (SPEC.md section 4, evaluated on the
//!   generator's own hourly counts) by at least 25 %, whatever
//!   `spike_factor` says.

use std::collections::BTreeMap;
use std::io::{self, Write};

use anyhow::{ensure, Context};
use rand::distributions::{Distribution, WeightedIndex};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Poisson, StandardNormal};
use time::format_description::well_known::Rfc3339;
use time::{Date, OffsetDateTime};

const DEFAULT_START: &str = "2024-05-01T00:00:00Z";
const DEFAULT_HOURS: u64 = 336;
const DEFAULT_ARNS: u32 = 200;
const DEFAULT_RATE_PER_HOUR: f64 = 2000.0;
const DEFAULT_SPIKES: u32 = 3;
const DEFAULT_SPIKE_FACTOR: f64 = 20.0;
const DEFAULT_DISORDER_SECS: u64 = 300;

/// Options; also the clap arguments of `trailspike generate`.
#[derive(Debug, Clone, clap::Args)]
pub struct GenerateArgs {
    /// Seed of the pseudo-random generator: the same seed gives the same output.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Event time of the first record, RFC 3339 (any offset; written in UTC).
    #[arg(long, default_value = DEFAULT_START)]
    pub start: String,
    /// How many hours of event time to cover.
    #[arg(long, default_value_t = DEFAULT_HOURS)]
    pub hours: u64,
    /// Number of distinct principals with an ARN. Roles whose session name
    /// churns add one ARN per session on top of this.
    #[arg(long, default_value_t = DEFAULT_ARNS)]
    pub arns: u32,
    /// Mean records per hour across all identities (before the daily rhythm).
    #[arg(long, default_value_t = DEFAULT_RATE_PER_HOUR)]
    pub rate_per_hour: f64,
    /// Spikes to inject: how many.
    #[arg(long, default_value_t = DEFAULT_SPIKES)]
    pub spikes: u32,
    /// Multiplier of an identity's usual hourly volume in a spike hour.
    #[arg(long, default_value_t = DEFAULT_SPIKE_FACTOR)]
    pub spike_factor: f64,
    /// Stop after this many records (0 = no limit), for benchmarks that want exactly N.
    #[arg(long, default_value_t = 0)]
    pub limit: u64,
    /// Fraction of records delivered out of order (shifted back in event time
    /// by up to `disorder_secs`, never beyond it).
    #[arg(long, default_value_t = 0.0)]
    pub disorder: f64,
    /// Largest shift back in event time of a disordered record, in seconds.
    #[arg(long, default_value_t = DEFAULT_DISORDER_SECS)]
    pub disorder_secs: u64,
    /// Write `{"Records":[...]}` log-file bodies of this many records per line
    /// instead of one record per line (0 = one record per line).
    #[arg(long, default_value_t = 0)]
    pub batch: u32,
}

impl Default for GenerateArgs {
    fn default() -> Self {
        Self {
            seed: 1,
            start: DEFAULT_START.to_owned(),
            hours: DEFAULT_HOURS,
            arns: DEFAULT_ARNS,
            rate_per_hour: DEFAULT_RATE_PER_HOUR,
            spikes: DEFAULT_SPIKES,
            spike_factor: DEFAULT_SPIKE_FACTOR,
            limit: 0,
            disorder: 0.0,
            disorder_secs: DEFAULT_DISORDER_SECS,
            batch: 0,
        }
    }
}

/// One spike the generator injected: tests check that it is alerted.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct InjectedSpike {
    pub arn: String,
    /// Start of the spike hour, seconds since the Unix epoch (epoch-aligned).
    pub window_start_unix: i64,
    /// The ARN's `AwsApiCall` records in that hour, normal traffic included.
    pub calls: u64,
}

/// What one call of [`generate`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateSummary {
    pub records: u64,
    pub bytes: u64,
    pub spikes: Vec<InjectedSpike>,
}

/// Writes records as JSON lines to `out` (the caller passes a BufWriter or
/// `Vec<u8>`); the generator also buffers, so an unbuffered writer works.
pub fn generate(
    args: &GenerateArgs,
    out: &mut dyn Write,
) -> anyhow::Result<GenerateSummary> {
    let span = check_args(args)?;
    let mut rng = ChaCha8Rng::seed_from_u64(args.seed);
    let world = World::build(args, &mut rng)?;
    let planned = plan_spike_hours(span, args.spikes, &mut rng);
    let mut run = Run::new(args, span, world, rng, planned, out)?;
    for hour in span.hours() {
        if !run.hour(hour).context("writing generated records")? {
            break;
        }
    }
    run.finish().context("writing generated records")
}

fn check_args(args: &GenerateArgs) -> anyhow::Result<Span> {
    let start = OffsetDateTime::parse(&args.start, &Rfc3339)
        .with_context(|| format!("--start {:?} is not an RFC 3339 time", args.start))?;
    ensure!(
        start.year() >= 1970,
        "--start {:?} lies before 1970, CloudTrail has no such records",
        args.start
    );
    let start = start.unix_timestamp();
    let end = i64::try_from(args.hours)
        .ok()
        .and_then(|h| h.checked_mul(HOUR))
        .and_then(|s| start.checked_add(s))
        .filter(|&end| OffsetDateTime::from_unix_timestamp(end + 2 * DAY).is_ok())
        .with_context(|| format!("--hours {} runs past the year 9999", args.hours))?;
    ensure!(args.arns >= 1, "--arns must be at least 1");
    ensure!(
        args.rate_per_hour.is_finite() && args.rate_per_hour >= 0.0,
        "--rate-per-hour must be a finite number >= 0, not {}",
        args.rate_per_hour
    );
    ensure!(
        args.spike_factor.is_finite() && args.spike_factor >= 1.0,
        "--spike-factor must be a finite number >= 1, not {}",
        args.spike_factor
    );
    ensure!(
        (0.0..=1.0).contains(&args.disorder),
        "--disorder must lie in [0, 1], not {}",
        args.disorder
    );
    Ok(Span { start, end })
}

const HOUR: i64 = 3600;
const DAY: i64 = 86_400;
/// Records of AWS services acting on their own (`AWSService`, no ARN).
const NO_ARN_SHARE: f64 = 0.05;
/// Records of service-linked roles: an ARN and `invokedBy`.
const INVOKED_BY_SHARE: f64 = 0.02;
const ROOT_SHARE: f64 = 0.001;
const ERROR_SHARE: f64 = 0.03;
/// Someone enumerating an account hits many denials.
const RECON_ERROR_SHARE: f64 = 0.3;
/// Console users' records that are sign-in events rather than API calls.
const SIGNIN_SHARE: f64 = 0.04;
/// People sometimes call an API outside their habits.
const EXPLORE_SHARE: f64 = 0.05;
/// Activity by identity rank follows a Zipf law with this exponent.
const ZIPF_EXPONENT: f64 = 1.1;
const MIN_HISTORY_HOURS: u32 = 20;
const SPIKE_MIN_EXTRA: u64 = 50;
const SPIKE_MARGIN: f64 = 1.25;
/// Spike targets: usual hourly volume in this range, so a spike is neither
/// lost in an automation role's flood nor made of a handful of calls.
const SPIKE_TYPICAL_RANGE: (f64, f64) = (3.0, 100.0);
/// The detector's defaults (SPEC.md sections 3 and 4).
const DEVIATIONS: f64 = 3.0;
const SMOOTHING: u32 = 720;
const FLUSH_BYTES: usize = 1 << 16;

/// The covered event time, `[start, end)` in Unix seconds.
#[derive(Debug, Clone, Copy)]
struct Span {
    start: i64,
    end: i64,
}

/// One epoch-aligned hour, of which `[lo, hi)` lies inside the span.
#[derive(Debug, Clone, Copy)]
struct Hour {
    unix_start: i64,
    lo: i64,
    hi: i64,
}

impl Span {
    fn hours(self) -> impl Iterator<Item = Hour> {
        let first = self.start.div_euclid(HOUR);
        let last = (self.end + HOUR - 1).div_euclid(HOUR);
        (first..last).map(move |h| {
            let unix_start = h * HOUR;
            let lo = unix_start.max(self.start);
            let hi = (unix_start + HOUR).min(self.end);
            Hour { unix_start, lo, hi }
        })
    }
}

impl Hour {
    fn is_full(&self) -> bool {
        self.hi - self.lo == HOUR
    }

    fn fraction(&self) -> f64 {
        (self.hi - self.lo) as f64 / HOUR as f64
    }

    fn index(&self) -> i64 {
        self.unix_start.div_euclid(HOUR)
    }
}

/// Spike hours: full hours in the later half of the span with at least
/// `MIN_HISTORY_HOURS` before them, distinct while there are enough.
fn plan_spike_hours(span: Span, spikes: u32, rng: &mut ChaCha8Rng) -> Vec<i64> {
    let full: Vec<i64> = span
        .hours()
        .filter(Hour::is_full)
        .map(|h| h.unix_start)
        .collect();
    let skip = full.len().div_ceil(2).max(MIN_HISTORY_HOURS as usize);
    let eligible = full.get(skip..).unwrap_or(&[]);
    if eligible.is_empty() {
        return Vec::new();
    }
    let wanted = spikes as usize;
    let mut planned: Vec<i64> = (0..wanted / eligible.len())
        .flat_map(|_| eligible.iter().copied())
        .collect();
    let rest = rand::seq::index::sample(rng, eligible.len(), wanted % eligible.len());
    planned.extend(rest.iter().map(|i| eligible[i]));
    planned.sort_unstable();
    planned
}

// ---------------------------------------------------------------------------
// The world: accounts and identities.

struct World {
    company: &'static str,
    accounts: Vec<Account>,
    identities: Vec<Identity>,
    sets: ApiSets,
}

struct Account {
    id: String,
    env: &'static str,
    /// Suffixes of the IAM Identity Center roles, one per permission set.
    sso: Vec<String>,
    /// Mixed into resource identifiers (KMS keys) so accounts differ.
    salt: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    IamUser,
    AssumedRole,
    Root,
    /// An AWS service acting on its own: no ARN.
    Service,
}

enum Session {
    /// No role session: IAM users, root, services.
    None,
    /// One session name for the role's whole life (an instance id, a
    /// function name, an e-mail address); credentials refresh every
    /// `refresh_h` hours.
    Stable {
        name: String,
        refresh_h: i64,
        ec2: bool,
    },
    /// A new session name, hence a new ARN, every `every_h` hours.
    Churning { style: Churn, every_h: i64 },
}

#[derive(Debug, Clone, Copy)]
enum Churn {
    Botocore,
    GitHubRun,
    EcsTask,
}

#[derive(Debug, Clone, Copy)]
enum Rhythm {
    /// Working hours in the identity's time zone, quiet weekends.
    Office { tz: i64, scale: f64 },
    /// Around the clock with a mild daily swing.
    Steady { amp: f64, peak: i64 },
    /// A batch job running for two hours a day.
    Nightly { at: i64 },
}

struct Identity {
    kind: Kind,
    account: usize,
    /// User name, role name, or the acting service for `Kind::Service`.
    name: String,
    /// The role's path in its issuer ARN, e.g. `aws-reserved/sso.amazonaws.com/`.
    path: &'static str,
    principal_id: String,
    /// Long-term access key of an IAM user.
    static_key: String,
    session: Session,
    invoked_by: Option<&'static str>,
    rhythm: Rhythm,
    /// Mean calls per hour before rhythm and noise.
    rate: f64,
    /// Sigma of the hour-to-hour log-normal noise on the rate.
    noise: f64,
    region: &'static str,
    profile: Picker,
    explores: bool,
    /// Browser user agent of someone who also uses the console.
    browser: Option<String>,
    agent: String,
    ip: String,
    vpce: Option<String>,
    /// Seeds the identity's per-session values (keys, session names).
    seed: u64,
    spikeable: bool,
}

impl World {
    fn build(args: &GenerateArgs, rng: &mut ChaCha8Rng) -> anyhow::Result<World> {
        let company = pick(rng, COMPANIES);
        let accounts = build_accounts(rng);
        let sets = ApiSets::new()?;
        let mut cast = Cast::new(rng, company, &accounts);
        let rate = args.rate_per_hour;
        let linked = match args.arns {
            0..=4 => 0,
            5..=19 => 1,
            _ => 3,
        };
        let roots = u32::from(args.arns >= 10);
        let regular = args.arns - linked - roots;
        let mut identities = service_actors(rng, &accounts, rate * NO_ARN_SHARE)?;
        let linked_share = if linked > 0 { INVOKED_BY_SHARE } else { 0.0 };
        for i in 0..linked {
            let share = linked_share / f64::from(linked);
            identities.push(linked_role(rng, i as usize, &accounts, rate * share)?);
        }
        for _ in 0..roots {
            identities.push(root(rng, &mut cast, rate * ROOT_SHARE)?);
        }
        let rest = 1.0 - NO_ARN_SHARE - linked_share - f64::from(roots) * ROOT_SHARE;
        identities.extend(regulars(rng, &mut cast, regular, rate * rest)?);
        Ok(World {
            company,
            accounts,
            identities,
            sets,
        })
    }
}

fn build_accounts(rng: &mut ChaCha8Rng) -> Vec<Account> {
    let n = rng.gen_range(3..=5);
    ENVS.iter()
        .take(n)
        .map(|&env| Account {
            id: random_account_id(rng),
            env,
            sso: SSO_SETS.iter().map(|_| hex_string(rng, 16)).collect(),
            salt: rng.gen(),
        })
        .collect()
}

fn random_account_id(rng: &mut ChaCha8Rng) -> String {
    let mut id = rng.gen_range(1..10u8).to_string();
    for _ in 0..11 {
        id.push(char::from(b'0' + rng.gen_range(0..10u8)));
    }
    id
}

/// Names and addresses shared while casting identities: unique names,
/// the office's outgoing addresses.
struct Cast {
    company: &'static str,
    accounts: usize,
    /// Each account's suffixes of its IAM Identity Center roles.
    sso: Vec<Vec<String>>,
    taken: BTreeMap<String, u32>,
    office_ips: Vec<String>,
}

impl Cast {
    fn new(rng: &mut ChaCha8Rng, company: &'static str, accounts: &[Account]) -> Self {
        let office_ips = (0..3).map(|_| public_ip(rng, OFFICE_NETS)).collect();
        Self {
            company,
            accounts: accounts.len(),
            sso: accounts.iter().map(|a| a.sso.clone()).collect(),
            taken: BTreeMap::new(),
            office_ips,
        }
    }

    fn unique(&mut self, base: &str) -> String {
        let seen = self.taken.entry(base.to_owned()).or_insert(0);
        *seen += 1;
        if *seen == 1 {
            base.to_owned()
        } else {
            format!("{base}-{seen}")
        }
    }

    /// Production holds the most principals.
    fn account(&self, rng: &mut ChaCha8Rng) -> usize {
        if rng.gen_bool(0.4) {
            0
        } else {
            rng.gen_range(0..self.accounts)
        }
    }
}

fn identity(
    kind: Kind,
    account: usize,
    name: String,
    profile: Picker,
    rng: &mut ChaCha8Rng,
) -> Identity {
    let (id_prefix, key_prefix) = match kind {
        Kind::IamUser => ("AIDA", "AKIA"),
        _ => ("AROA", "ASIA"),
    };
    Identity {
        kind,
        account,
        name,
        path: "",
        principal_id: format!("{id_prefix}{}", alnum_string(rng, 17)),
        static_key: format!("{key_prefix}{}", alnum_string(rng, 16)),
        session: Session::None,
        invoked_by: None,
        rhythm: Rhythm::Steady { amp: 0.2, peak: 14 },
        rate: 0.0,
        noise: 0.12,
        region: pick(rng, REGIONS),
        profile,
        explores: false,
        browser: None,
        agent: String::new(),
        ip: String::new(),
        vpce: None,
        seed: rng.gen(),
        spikeable: false,
    }
}

fn service_actors(
    rng: &mut ChaCha8Rng,
    accounts: &[Account],
    rate: f64,
) -> anyhow::Result<Vec<Identity>> {
    let mut actors = Vec::new();
    for &(service, share, sources) in SERVICE_ACTORS {
        for account in 0..accounts.len() {
            let mix =
                Picker::matching(|a| a.users & SVC != 0 && sources.contains(&a.svc))?;
            let mut who = identity(Kind::Service, account, service.to_owned(), mix, rng);
            who.invoked_by = Some(service);
            who.agent = service.to_owned();
            who.ip = service.to_owned();
            who.rate = rate * share / accounts.len() as f64;
            actors.push(who);
        }
    }
    Ok(actors)
}

fn linked_role(
    rng: &mut ChaCha8Rng,
    i: usize,
    accounts: &[Account],
    rate: f64,
) -> anyhow::Result<Identity> {
    let (role, session, service, path) = LINKED_ROLES[i % LINKED_ROLES.len()];
    let account = (i / LINKED_ROLES.len()) % accounts.len();
    let mix = profile(rng, LINKED, 2..=4)?;
    let mut who = identity(Kind::AssumedRole, account, role.to_owned(), mix, rng);
    who.path = path;
    who.session = Session::Stable {
        name: session.to_owned(),
        refresh_h: 1,
        ec2: false,
    };
    who.invoked_by = Some(service);
    who.agent = service.to_owned();
    who.ip = service.to_owned();
    who.rate = rate;
    Ok(who)
}

fn root(rng: &mut ChaCha8Rng, cast: &mut Cast, rate: f64) -> anyhow::Result<Identity> {
    let mix = profile(rng, HUMAN, 4..=8)?;
    let mut who = identity(Kind::Root, 0, "root".to_owned(), mix, rng);
    be_a_person(&mut who, rng, cast, true);
    who.rate = rate;
    Ok(who)
}

fn regulars(
    rng: &mut ChaCha8Rng,
    cast: &mut Cast,
    n: u32,
    rate: f64,
) -> anyhow::Result<Vec<Identity>> {
    let weights: Vec<f64> = (1..=n)
        .map(|rank| f64::from(rank).powf(-ZIPF_EXPONENT))
        .collect();
    let total: f64 = weights.iter().sum();
    let heavy = (n / 10).max(2) as usize;
    let mut cast_out = Vec::with_capacity(n as usize);
    for (rank, weight) in weights.iter().enumerate() {
        let mut who = match (rank < heavy, rng.gen_range(0..100)) {
            (true, _) | (false, 65..=89) => automaton(rng, cast)?,
            (false, 0..=64) => human(rng, cast)?,
            (false, _) => nightly(rng, cast)?,
        };
        who.rate = rate * weight / total;
        cast_out.push(who);
    }
    Ok(cast_out)
}

fn human(rng: &mut ChaCha8Rng, cast: &mut Cast) -> anyhow::Result<Identity> {
    let account = cast.account(rng);
    let person = cast.unique(&format!("{}.{}", pick(rng, FIRST), pick(rng, LAST)));
    let mix = profile(rng, HUMAN, 8..=20)?;
    let mut who = if rng.gen_bool(0.55) {
        let set = rng.gen_range(0..SSO_SETS.len());
        let suffix = cast.sso[account].get(set).map_or("", String::as_str);
        let role = format!("AWSReservedSSO_{}_{suffix}", SSO_SETS[set]);
        let mut who = identity(Kind::AssumedRole, account, role, mix, rng);
        who.path = "aws-reserved/sso.amazonaws.com/";
        who.session = Session::Stable {
            name: format!("{person}@{}.com", cast.company),
            refresh_h: 8,
            ec2: false,
        };
        who
    } else {
        identity(Kind::IamUser, account, person, mix, rng)
    };
    let console = rng.gen_bool(0.7);
    be_a_person(&mut who, rng, cast, console);
    Ok(who)
}

/// Office hours, noisy habits, a CLI and maybe a browser.
fn be_a_person(who: &mut Identity, rng: &mut ChaCha8Rng, cast: &Cast, console: bool) {
    who.rhythm = Rhythm::Office {
        tz: *[0, 0, 0, 1, 1, 2, -5, -8, 8].choose(rng).unwrap_or(&0),
        scale: 1.0 / office_mean(),
    };
    who.noise = 0.3;
    who.explores = true;
    who.browser = console.then(|| pick(rng, BROWSERS).to_owned());
    who.agent = match rng.gen_range(0..20) {
        0..=11 => aws_cli(rng),
        12..=16 => boto3(rng, None),
        _ => terraform(rng),
    };
    who.ip = if rng.gen_bool(0.7) {
        pick_string(rng, &cast.office_ips)
    } else {
        public_ip(rng, HOME_NETS)
    };
    who.spikeable = true;
}

fn automaton(rng: &mut ChaCha8Rng, cast: &mut Cast) -> anyhow::Result<Identity> {
    let account = cast.account(rng);
    let mix = profile(rng, AUTOMATION, 2..=6)?;
    let mut who = if rng.gen_bool(0.65) {
        let &(base, habit) = ROLE_HABITS.choose(rng).unwrap_or(&ROLE_HABITS[0]);
        let role = cast.unique(base);
        let mut who = identity(Kind::AssumedRole, account, role, mix, rng);
        who.session = habit.session(rng, &who.name);
        who.agent = habit.agent(rng);
        who.spikeable = matches!(who.session, Session::Stable { .. });
        who
    } else {
        let name = cast.unique(pick(rng, SERVICE_USERS));
        let mut who = identity(Kind::IamUser, account, name, mix, rng);
        who.agent = if who.name.contains("terraform") {
            terraform(rng)
        } else {
            boto3(rng, None)
        };
        who.spikeable = true;
        who
    };
    who.rhythm = Rhythm::Steady {
        amp: rng.gen_range(0.05..0.3),
        peak: rng.gen_range(0..24),
    };
    place_in_aws(&mut who, rng);
    Ok(who)
}

fn nightly(rng: &mut ChaCha8Rng, cast: &mut Cast) -> anyhow::Result<Identity> {
    let mut who = automaton(rng, cast)?;
    who.rhythm = Rhythm::Nightly {
        at: rng.gen_range(0..6),
    };
    who.noise = 0.15;
    Ok(who)
}

/// Automation calls from inside AWS: through a VPC endpoint or from a
/// public AWS address.
fn place_in_aws(who: &mut Identity, rng: &mut ChaCha8Rng) {
    if rng.gen_bool(0.5) {
        who.ip = format!(
            "10.{}.{}.{}",
            rng.gen_range(0..64),
            rng.gen::<u8>(),
            rng.gen_range(1..255)
        );
        who.vpce = Some(format!("vpce-0{}", hex_string(rng, 16)));
    } else {
        who.ip = public_ip(rng, AWS_NETS);
    }
}

#[derive(Debug, Clone, Copy)]
enum Habit {
    Instance,
    Function,
    Task,
    Pipeline,
    Sdk,
}

impl Habit {
    fn session(self, rng: &mut ChaCha8Rng, role: &str) -> Session {
        match self {
            Habit::Instance => Session::Stable {
                name: format!("i-0{}", hex_string(rng, 16)),
                refresh_h: 6,
                ec2: true,
            },
            Habit::Function => Session::Stable {
                name: role.trim_end_matches("-role").to_owned(),
                refresh_h: 12,
                ec2: false,
            },
            Habit::Task => Session::Churning {
                style: Churn::EcsTask,
                every_h: 12,
            },
            Habit::Pipeline => Session::Churning {
                style: Churn::GitHubRun,
                every_h: rng.gen_range(1..=3),
            },
            Habit::Sdk => Session::Churning {
                style: Churn::Botocore,
                every_h: 1,
            },
        }
    }

    fn agent(self, rng: &mut ChaCha8Rng) -> String {
        match self {
            Habit::Instance => match rng.gen_range(0..3) {
                0 => aws_cli(rng),
                1 => go_sdk(rng),
                _ => boto3(rng, None),
            },
            Habit::Function => {
                if rng.gen_bool(0.5) {
                    node_sdk(rng)
                } else {
                    boto3(rng, Some("AWS_Lambda_python3.12"))
                }
            }
            Habit::Task => java_sdk(rng),
            Habit::Pipeline => terraform(rng),
            Habit::Sdk => boto3(rng, None),
        }
    }
}

fn office_mean() -> f64 {
    let weekday: f64 = OFFICE_HOURS.iter().sum();
    weekday * (5.0 + 2.0 * WEEKEND) / (7.0 * 24.0)
}

impl Rhythm {
    /// Multiplier of the rate in the hour `unix_hour` (hours since the
    /// epoch); its mean over a week is 1.
    fn factor(self, unix_hour: i64) -> f64 {
        match self {
            Rhythm::Office { tz, scale } => {
                let local = unix_hour + tz;
                // 1970-01-01 was a Thursday: day 0 is weekday 3 counting from Monday.
                let weekday = (local.div_euclid(24) + 3).rem_euclid(7);
                let week = if weekday >= 5 { WEEKEND } else { 1.0 };
                OFFICE_HOURS[local.rem_euclid(24) as usize] * week * scale
            }
            Rhythm::Steady { amp, peak } => {
                let phase = (unix_hour - peak).rem_euclid(24) as f64;
                1.0 + amp * (phase * std::f64::consts::TAU / 24.0).cos()
            }
            Rhythm::Nightly { at } => {
                let hour = unix_hour.rem_euclid(24);
                if hour == at || hour == at + 1 {
                    12.0
                } else {
                    0.0
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// API mixes.

/// A weighted choice among catalog entries.
struct Picker {
    apis: Vec<u16>,
    index: WeightedIndex<u32>,
}

impl Picker {
    fn new(pairs: impl IntoIterator<Item = (usize, u32)>) -> anyhow::Result<Self> {
        let (apis, weights): (Vec<u16>, Vec<u32>) =
            pairs.into_iter().map(|(i, w)| (i as u16, w.max(1))).unzip();
        let index = WeightedIndex::new(&weights).context("an API mix came out empty")?;
        Ok(Self { apis, index })
    }

    fn matching(filter: impl Fn(&Api) -> bool) -> anyhow::Result<Self> {
        Self::new(
            CATALOG
                .iter()
                .enumerate()
                .filter(|(_, a)| filter(a))
                .map(|(i, a)| (i, a.weight)),
        )
    }

    fn pick(&self, rng: &mut ChaCha8Rng) -> &'static Api {
        &CATALOG[usize::from(self.apis[self.index.sample(rng)])]
    }
}

/// An identity's habits: `size` calls drawn from the catalog entries its
/// kind makes, by popularity, each with a personal preference.
fn profile(
    rng: &mut ChaCha8Rng,
    users: u8,
    size: std::ops::RangeInclusive<usize>,
) -> anyhow::Result<Picker> {
    let pool: Vec<usize> = (0..CATALOG.len())
        .filter(|&i| CATALOG[i].users & users != 0)
        .collect();
    let k = rng.gen_range(size).min(pool.len());
    let weight = |i: usize| f64::from(CATALOG[pool[i]].weight);
    let chosen = rand::seq::index::sample_weighted(rng, pool.len(), weight, k)
        .context("drawing an identity's API mix")?;
    let mut pairs = Vec::with_capacity(k);
    for c in chosen.iter() {
        let taste: f64 = rng.gen_range(0.3..3.0);
        pairs.push((pool[c], (f64::from(CATALOG[pool[c]].weight) * taste) as u32));
    }
    Picker::new(pairs)
}

/// Mixes that do not belong to one identity.
struct ApiSets {
    human: Picker,
    recon: Picker,
    signin: Picker,
}

impl ApiSets {
    fn new() -> anyhow::Result<Self> {
        Ok(Self {
            human: Picker::matching(|a| a.users & HUMAN != 0)?,
            recon: Picker::matching(|a| a.users & RECON != 0)?,
            signin: Picker::matching(|a| a.class == Class::SignIn)?,
        })
    }
}

// ---------------------------------------------------------------------------
// The walk through time.

/// What changes per identity as time goes by.
struct Live {
    /// Session whose rendering `user_identity` holds.
    session: Option<i64>,
    arn: String,
    /// The record's `userIdentity` object, rendered once per session.
    user_identity: Vec<u8>,
    /// `AwsApiCall` records this hour, by the hour they were drawn for.
    calls: u32,
    baseline: Baseline,
    spike: Option<usize>,
}

/// The detector's per-ARN statistics (SPEC.md section 3), kept here to
/// size spikes against exactly what the detector will have seen.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Baseline {
    n: u32,
    avg: f64,
    stdev: f64,
}

impl Baseline {
    fn updated(self, x: f64) -> Baseline {
        let n = self.n + 1;
        let d = f64::from(n.min(SMOOTHING));
        let avg = self.avg + (x - self.avg) / d;
        let var = (self.stdev * self.stdev * (d - 1.0) + (x - avg) * (x - self.avg)) / d;
        Baseline {
            n,
            avg,
            stdev: var.max(0.0).sqrt(),
        }
    }

    fn threshold(self) -> f64 {
        self.avg + DEVIATIONS * self.stdev
    }

    /// Whether `x` calls clear the rule before and after the update, both
    /// with the margin.
    fn clears(self, x: f64) -> bool {
        x >= SPIKE_MARGIN * self.threshold()
            && x >= SPIKE_MARGIN * self.updated(x).threshold()
    }
}

struct SpikeState {
    ident: usize,
    window: i64,
    calls: u64,
    complete: bool,
    ip: String,
    agent: String,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    ident: u32,
    recon: bool,
}

struct Run<'a> {
    args: &'a GenerateArgs,
    span: Span,
    world: World,
    live: Vec<Live>,
    rng: ChaCha8Rng,
    dates: DateTable,
    sink: Sink<'a>,
    /// Start of each planned spike's hour, ascending.
    planned: Vec<i64>,
    spikes: Vec<SpikeState>,
    counts: Vec<u32>,
    recon: Vec<(usize, u32)>,
    slots: Vec<Slot>,
    secs: Vec<u16>,
    touched: Vec<usize>,
}

impl<'a> Run<'a> {
    fn new(
        args: &'a GenerateArgs,
        span: Span,
        world: World,
        rng: ChaCha8Rng,
        planned: Vec<i64>,
        out: &'a mut dyn Write,
    ) -> anyhow::Result<Self> {
        let live = world
            .identities
            .iter()
            .map(|_| Live {
                session: None,
                arn: String::new(),
                user_identity: Vec::new(),
                calls: 0,
                baseline: Baseline::default(),
                spike: None,
            })
            .collect();
        let counts = vec![0; world.identities.len()];
        Ok(Self {
            args,
            span,
            world,
            live,
            rng,
            dates: DateTable::new(span)?,
            sink: Sink::new(out, args.batch),
            planned,
            spikes: Vec::new(),
            counts,
            recon: Vec::new(),
            slots: Vec::new(),
            secs: Vec::new(),
            touched: Vec::new(),
        })
    }

    /// Writes one hour; false once the record limit stopped the run.
    fn hour(&mut self, hour: Hour) -> io::Result<bool> {
        self.draw_counts(hour);
        self.inject_spikes(hour);
        self.render_identities(hour);
        self.schedule(hour);
        let finished = self.emit_hour(hour)?;
        if finished {
            self.close_hour(hour);
        }
        Ok(finished)
    }

    fn draw_counts(&mut self, hour: Hour) {
        let fraction = hour.fraction();
        for (who, count) in self.world.identities.iter().zip(&mut self.counts) {
            let mut lambda = who.rate * who.rhythm.factor(hour.index()) * fraction;
            if lambda > 0.0 && who.noise > 0.0 {
                let z: f64 = self.rng.sample(StandardNormal);
                lambda *= (who.noise * z - who.noise * who.noise / 2.0).exp();
            }
            *count = poisson(&mut self.rng, lambda);
        }
    }

    fn inject_spikes(&mut self, hour: Hour) {
        self.recon.clear();
        while self.planned.first() == Some(&hour.unix_start) {
            self.planned.remove(0);
            let Some(ident) = self.spike_target() else {
                continue;
            };
            let live = &mut self.live[ident];
            let normal = u64::from(self.counts[ident]);
            let calls = spike_calls(live.baseline, normal, self.args.spike_factor);
            let extra = u32::try_from(calls - normal).unwrap_or(u32::MAX);
            live.spike = Some(self.spikes.len());
            self.recon.push((ident, extra));
            self.spikes.push(SpikeState {
                ident,
                window: hour.unix_start,
                calls: 0,
                complete: false,
                ip: public_ip(&mut self.rng, VPS_NETS),
                agent: attacker_agent(&mut self.rng),
            });
        }
    }

    /// A moderately active identity with enough history, picked at random.
    fn spike_target(&mut self) -> Option<usize> {
        let (low, high) = SPIKE_TYPICAL_RANGE;
        let eligible: Vec<usize> = (0..self.live.len())
            .filter(|&i| {
                let live = &self.live[i];
                self.world.identities[i].spikeable
                    && live.spike.is_none()
                    && live.baseline.n >= MIN_HISTORY_HOURS
            })
            .collect();
        let moderate: Vec<usize> = eligible
            .iter()
            .copied()
            .filter(|&i| (low..=high).contains(&self.live[i].baseline.avg))
            .collect();
        let pool = if moderate.is_empty() {
            &eligible
        } else {
            &moderate
        };
        pool.choose(&mut self.rng).copied()
    }

    fn render_identities(&mut self, hour: Hour) {
        let recon = self.recon.iter().map(|&(i, _)| i);
        let active = self
            .counts
            .iter()
            .enumerate()
            .filter(|(_, &c)| c > 0)
            .map(|(i, _)| i);
        for i in active.chain(recon) {
            let who = &self.world.identities[i];
            let account = &self.world.accounts[who.account];
            render(
                &mut self.live[i],
                who,
                account,
                &self.dates,
                hour.unix_start,
            );
        }
    }

    /// Lays the hour's calls out in time: a uniform second for each, in
    /// random order of identities.
    fn schedule(&mut self, hour: Hour) {
        self.slots.clear();
        for (ident, &count) in self.counts.iter().enumerate() {
            let slot = Slot {
                ident: ident as u32,
                recon: false,
            };
            self.slots.extend(std::iter::repeat_n(slot, count as usize));
        }
        for &(ident, extra) in &self.recon {
            let slot = Slot {
                ident: ident as u32,
                recon: true,
            };
            self.slots.extend(std::iter::repeat_n(slot, extra as usize));
        }
        self.slots.shuffle(&mut self.rng);
        let (lo, hi) = (hour.lo - hour.unix_start, hour.hi - hour.unix_start);
        self.secs.clear();
        for _ in 0..self.slots.len() {
            self.secs.push(self.rng.gen_range(lo..hi) as u16);
        }
        self.secs.sort_unstable();
    }

    fn emit_hour(&mut self, hour: Hour) -> io::Result<bool> {
        let slots = std::mem::take(&mut self.slots);
        let secs = std::mem::take(&mut self.secs);
        let mut finished = true;
        for (&slot, &sec) in slots.iter().zip(&secs) {
            if self.args.limit > 0 && self.sink.records >= self.args.limit {
                finished = false;
                break;
            }
            self.emit(hour.unix_start + i64::from(sec), slot)?;
        }
        self.slots = slots;
        self.secs = secs;
        Ok(finished)
    }

    fn emit(&mut self, drawn_at: i64, slot: Slot) -> io::Result<()> {
        let time = self.displace(drawn_at);
        let ident = slot.ident as usize;
        let who = &self.world.identities[ident];
        let live = &self.live[ident];
        let spike = live.spike.map(|s| &self.spikes[s]).filter(|_| slot.recon);
        let cx = compose(
            &mut self.rng,
            &self.world,
            who,
            live,
            &self.dates,
            time,
            spike,
        );
        let buf = self.sink.open_record();
        write_record(&mut Json::new(buf), &mut self.rng, &cx);
        let counted = cx.api.class.counts();
        self.sink.close_record()?;
        if counted {
            self.count_call(ident, time);
        }
        Ok(())
    }

    /// Moves a `disorder` share of records back in event time.
    fn displace(&mut self, time: i64) -> i64 {
        if self.args.disorder <= 0.0 || self.args.disorder_secs == 0 {
            return time;
        }
        if !self.rng.gen_bool(self.args.disorder) {
            return time;
        }
        let back = self.rng.gen_range(1..=self.args.disorder_secs);
        let back = i64::try_from(back).unwrap_or(i64::MAX);
        time.saturating_sub(back).max(self.span.start)
    }

    fn count_call(&mut self, ident: usize, time: i64) {
        let live = &mut self.live[ident];
        if live.calls == 0 {
            self.touched.push(ident);
        }
        live.calls += 1;
        if let Some(s) = live.spike {
            let spike = &mut self.spikes[s];
            if time.div_euclid(HOUR) * HOUR == spike.window {
                spike.calls += 1;
            }
        }
    }

    fn close_hour(&mut self, hour: Hour) {
        for &i in &self.touched {
            let live = &mut self.live[i];
            live.baseline = live.baseline.updated(f64::from(live.calls));
            live.calls = 0;
        }
        self.touched.clear();
        for spike in &mut self.spikes {
            if spike.window == hour.unix_start {
                spike.complete = true;
            }
        }
    }

    fn finish(mut self) -> io::Result<GenerateSummary> {
        self.sink.finish()?;
        let spikes = self
            .spikes
            .iter()
            .filter(|s| s.complete)
            .map(|s| InjectedSpike {
                arn: self.live[s.ident].arn.clone(),
                window_start_unix: s.window,
                calls: s.calls,
            })
            .collect();
        Ok(GenerateSummary {
            records: self.sink.records,
            bytes: self.sink.bytes,
            spikes,
        })
    }
}

fn poisson(rng: &mut ChaCha8Rng, lambda: f64) -> u32 {
    if lambda <= 0.0 {
        return 0;
    }
    Poisson::new(lambda).map_or(0, |p| p.sample(rng) as u32)
}

/// The spike hour's total: `factor` times the usual volume, at least
/// `SPIKE_MIN_EXTRA` above this hour's normal traffic, and clear of the
/// detection rule by the margin.
fn spike_calls(baseline: Baseline, normal: u64, factor: f64) -> u64 {
    let wanted = (factor * baseline.avg).ceil() as u64;
    let mut calls = wanted.max(normal + SPIKE_MIN_EXTRA);
    // Grows geometrically: with 20 points of history the rule is cleared
    // long before the cap.
    for _ in 0..1000 {
        if baseline.clears(calls as f64) {
            break;
        }
        calls += (calls / 32).max(1);
    }
    calls
}

/// Renders the identity's `userIdentity` for the session that covers
/// `hour_start`, unless it already is.
fn render(
    live: &mut Live,
    who: &Identity,
    account: &Account,
    dates: &DateTable,
    hour_start: i64,
) {
    let hours = who.session_hours();
    let session = hour_start.div_euclid(HOUR * hours);
    if live.session == Some(session) {
        return;
    }
    live.session = Some(session);
    let mut rng = ChaCha8Rng::seed_from_u64(who.seed);
    rng.set_stream(session as u64);
    let began = session * hours * HOUR;
    let created = began - rng.gen_range(0..900);
    let key = format!("ASIA{}", alnum_string(&mut rng, 16));
    let name = who.session_name(&mut rng, began);
    live.arn = who.arn(&account.id, &name);
    live.user_identity.clear();
    let mut j = Json::new(&mut live.user_identity);
    let issue = Issue {
        account,
        arn: &live.arn,
        session: &name,
        key: &key,
        created,
        dates,
    };
    match who.kind {
        Kind::IamUser => iam_user_identity(&mut j, who, &issue),
        Kind::AssumedRole => role_identity(&mut j, who, &issue),
        Kind::Root => root_identity(&mut j, &issue),
        Kind::Service => service_identity(&mut j, who),
    }
}

impl Identity {
    fn session_hours(&self) -> i64 {
        match self.session {
            Session::None => 24,
            Session::Stable { refresh_h, .. } => refresh_h,
            Session::Churning { every_h, .. } => every_h,
        }
    }

    fn session_name(&self, rng: &mut ChaCha8Rng, began: i64) -> String {
        match &self.session {
            Session::None => String::new(),
            Session::Stable { name, .. } => name.clone(),
            Session::Churning { style, .. } => match style {
                Churn::Botocore => format!("botocore-session-{began}"),
                Churn::GitHubRun => format!(
                    "GitHubActions-{}",
                    rng.gen_range(10u64.pow(9)..10u64.pow(10))
                ),
                Churn::EcsTask => hex_string(rng, 32),
            },
        }
    }

    fn arn(&self, account: &str, session: &str) -> String {
        match self.kind {
            Kind::IamUser => format!("arn:aws:iam::{account}:user/{}", self.name),
            Kind::AssumedRole => {
                format!(
                    "arn:aws:sts::{account}:assumed-role/{}/{session}",
                    self.name
                )
            }
            Kind::Root => format!("arn:aws:iam::{account}:root"),
            Kind::Service => String::new(),
        }
    }
}

/// What a session's `userIdentity` is rendered from.
struct Issue<'a> {
    account: &'a Account,
    arn: &'a str,
    session: &'a str,
    key: &'a str,
    created: i64,
    dates: &'a DateTable,
}

fn iam_user_identity(j: &mut Json, who: &Identity, issue: &Issue) {
    j.open_obj();
    j.str_field("type", "IAMUser");
    j.str_field("principalId", &who.principal_id);
    j.str_field("arn", issue.arn);
    j.str_field("accountId", &issue.account.id);
    let console = who.browser.is_some();
    j.str_field(
        "accessKeyId",
        if console { issue.key } else { &who.static_key },
    );
    j.str_field("userName", &who.name);
    if console {
        j.obj_field("sessionContext");
        j.obj_field("sessionIssuer");
        j.close_obj();
        j.obj_field("webIdFederationData");
        j.close_obj();
        session_attributes(j, issue, "true");
        j.close_obj();
    }
    j.close_obj();
}

fn role_identity(j: &mut Json, who: &Identity, issue: &Issue) {
    let account = &issue.account.id;
    j.open_obj();
    j.str_field("type", "AssumedRole");
    j.parts_field("principalId", &[&who.principal_id, ":", issue.session]);
    j.str_field("arn", issue.arn);
    j.str_field("accountId", account);
    j.str_field("accessKeyId", issue.key);
    j.obj_field("sessionContext");
    j.obj_field("sessionIssuer");
    j.str_field("type", "Role");
    j.str_field("principalId", &who.principal_id);
    j.parts_field(
        "arn",
        &["arn:aws:iam::", account, ":role/", who.path, &who.name],
    );
    j.str_field("accountId", account);
    j.str_field("userName", &who.name);
    j.close_obj();
    j.obj_field("webIdFederationData");
    j.close_obj();
    session_attributes(j, issue, "false");
    if matches!(who.session, Session::Stable { ec2: true, .. }) {
        j.str_field("ec2RoleDelivery", "2.0");
    }
    j.close_obj();
    if let Some(service) = who.invoked_by {
        j.str_field("invokedBy", service);
    }
    j.close_obj();
}

fn session_attributes(j: &mut Json, issue: &Issue, mfa: &str) {
    j.obj_field("attributes");
    j.key("creationDate");
    j.iso_time(issue.dates, issue.created);
    j.str_field("mfaAuthenticated", mfa);
    j.close_obj();
}

fn root_identity(j: &mut Json, issue: &Issue) {
    j.open_obj();
    j.str_field("type", "Root");
    j.str_field("principalId", &issue.account.id);
    j.str_field("arn", issue.arn);
    j.str_field("accountId", &issue.account.id);
    j.str_field("accessKeyId", issue.key);
    j.obj_field("sessionContext");
    j.obj_field("sessionIssuer");
    j.close_obj();
    j.obj_field("webIdFederationData");
    j.close_obj();
    session_attributes(j, issue, "true");
    j.close_obj();
    j.close_obj();
}

fn service_identity(j: &mut Json, who: &Identity) {
    j.open_obj();
    j.str_field("type", "AWSService");
    j.str_field("invokedBy", &who.name);
    j.close_obj();
}

// ---------------------------------------------------------------------------
// One record.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    Denied,
    Throttled,
    Missing,
}

/// Everything a record is written from, decided before writing starts.
struct Cx<'a> {
    world: &'a World,
    who: &'a Identity,
    live: &'a Live,
    account: &'a Account,
    dates: &'a DateTable,
    api: &'static Api,
    time: i64,
    region: &'static str,
    agent: &'a str,
    ip: &'a str,
    console: bool,
    failure: Option<Failure>,
    /// Drawn once so that fields naming the same resource agree.
    pick: u64,
    /// How many items a list-shaped request or response holds.
    items: u32,
}

fn compose<'a>(
    rng: &mut ChaCha8Rng,
    world: &'a World,
    who: &'a Identity,
    live: &'a Live,
    dates: &'a DateTable,
    time: i64,
    spike: Option<&'a SpikeState>,
) -> Cx<'a> {
    let api = choose_api(rng, world, who, spike.is_some());
    let console = api.class == Class::SignIn
        || (who.browser.is_some() && api.users & HUMAN != 0 && rng.gen_bool(0.5));
    let (agent, ip) = match spike {
        Some(s) => (s.agent.as_str(), s.ip.as_str()),
        None => (choose_agent(who, api, console), who.ip.as_str()),
    };
    Cx {
        world,
        who,
        live,
        account: &world.accounts[who.account],
        dates,
        api,
        time,
        region: choose_region(rng, who, api),
        agent,
        ip,
        console,
        failure: choose_failure(rng, who, api, spike.is_some()),
        pick: rng.gen(),
        items: choose_items(rng),
    }
}

fn choose_api(
    rng: &mut ChaCha8Rng,
    world: &World,
    who: &Identity,
    recon: bool,
) -> &'static Api {
    if recon {
        world.sets.recon.pick(rng)
    } else if who.browser.is_some() && rng.gen_bool(SIGNIN_SHARE) {
        world.sets.signin.pick(rng)
    } else if who.explores && rng.gen_bool(EXPLORE_SHARE) {
        world.sets.human.pick(rng)
    } else {
        who.profile.pick(rng)
    }
}

fn choose_agent<'a>(who: &'a Identity, api: &Api, console: bool) -> &'a str {
    if api.class == Class::SignIn {
        return who.browser.as_deref().unwrap_or(BROWSERS[0]);
    }
    if !console {
        return &who.agent;
    }
    match api.svc {
        Svc::Ec2 => "console.ec2.amazonaws.com",
        Svc::S3 => "[S3Console/0.4, aws-internal/3]",
        _ => "AWS Internal",
    }
}

fn choose_region(rng: &mut ChaCha8Rng, who: &Identity, api: &Api) -> &'static str {
    if api.svc.is_global() {
        "us-east-1"
    } else if rng.gen_bool(0.9) {
        who.region
    } else {
        pick(rng, REGIONS)
    }
}

fn choose_failure(
    rng: &mut ChaCha8Rng,
    who: &Identity,
    api: &Api,
    recon: bool,
) -> Option<Failure> {
    if who.kind == Kind::Service || !api.class.counts() {
        return None;
    }
    let share = if recon {
        RECON_ERROR_SHARE
    } else {
        ERROR_SHARE
    };
    if !rng.gen_bool(share) {
        return None;
    }
    Some(match (recon, rng.gen_range(0..10)) {
        (true, _) | (false, 0..=4) => Failure::Denied,
        (false, 5..=7) => Failure::Throttled,
        (false, _) => Failure::Missing,
    })
}

/// Mostly one item, sometimes a page full.
fn choose_items(rng: &mut ChaCha8Rng) -> u32 {
    match rng.gen_range(0..100) {
        0..=69 => 1,
        70..=89 => rng.gen_range(2..=4),
        90..=97 => rng.gen_range(5..=12),
        _ => rng.gen_range(13..=40),
    }
}

/// Writes one record, fields in the order CloudTrail writes them.
fn write_record(j: &mut Json, rng: &mut ChaCha8Rng, cx: &Cx) {
    let api = cx.api;
    j.open_obj();
    j.str_field("eventVersion", api.svc.event_version());
    j.raw_field("userIdentity", &cx.live.user_identity);
    j.key("eventTime");
    j.iso_time(cx.dates, cx.time);
    j.str_field("eventSource", api.svc.source());
    j.str_field("eventName", api.name);
    j.str_field("awsRegion", cx.region);
    j.str_field("sourceIPAddress", cx.ip);
    j.str_field("userAgent", cx.agent);
    if let Some(failure) = cx.failure {
        write_failure(j, rng, cx, failure);
    }
    j.key("requestParameters");
    (api.request)(j, rng, cx);
    j.key("responseElements");
    match cx.failure {
        Some(_) => j.null(),
        None => (api.response)(j, rng, cx),
    }
    write_additional(j, rng, cx);
    write_ids(j, rng, cx);
    j.bool_field("readOnly", api.read_only);
    write_resources(j, cx);
    j.str_field("eventType", api.class.event_type());
    j.bool_field("managementEvent", api.class != Class::Data);
    j.str_field("recipientAccountId", &cx.account.id);
    write_trailer(j, rng, cx);
    j.close_obj();
}

fn write_ids(j: &mut Json, rng: &mut ChaCha8Rng, cx: &Cx) {
    if cx.api.class != Class::SignIn {
        j.key("requestID");
        if cx.api.svc == Svc::S3 {
            j.string_with(|b| push_hex_upper(b, rng.gen(), 16));
        } else {
            j.uuid(rng.gen());
        }
    }
    j.key("eventID");
    j.uuid(rng.gen());
}

fn write_trailer(j: &mut Json, rng: &mut ChaCha8Rng, cx: &Cx) {
    if cx.who.kind == Kind::Service {
        j.key("sharedEventID");
        j.uuid(rng.gen());
    }
    if let Some(vpce) = &cx.who.vpce {
        j.str_field("vpcEndpointId", vpce);
    }
    let category = match cx.api.class {
        Class::Data => "Data",
        _ => "Management",
    };
    j.str_field("eventCategory", category);
    if cx.who.invoked_by.is_none() {
        write_tls(j, rng, cx);
    }
    if cx.console && cx.api.class != Class::SignIn {
        j.str_field("sessionCredentialFromConsole", "true");
    }
}

fn write_tls(j: &mut Json, rng: &mut ChaCha8Rng, cx: &Cx) {
    let (version, suite) = if rng.gen_bool(0.8) {
        ("TLSv1.3", "TLS_AES_128_GCM_SHA256")
    } else {
        ("TLSv1.2", "ECDHE-RSA-AES128-GCM-SHA256")
    };
    j.obj_field("tlsDetails");
    j.str_field("tlsVersion", version);
    j.str_field("cipherSuite", suite);
    let prefix = cx.api.svc.prefix();
    match cx.api.svc {
        Svc::Signin => j.str_field("clientProvidedHostHeader", "signin.aws.amazon.com"),
        svc if svc.is_global() => {
            j.parts_field("clientProvidedHostHeader", &[prefix, ".amazonaws.com"])
        }
        _ => j.parts_field(
            "clientProvidedHostHeader",
            &[prefix, ".", cx.region, ".amazonaws.com"],
        ),
    }
    j.close_obj();
}

fn write_failure(j: &mut Json, rng: &mut ChaCha8Rng, cx: &Cx, failure: Failure) {
    let (code, message) = cx.api.svc.failure(failure);
    j.str_field("errorCode", code);
    if failure != Failure::Denied {
        j.str_field("errorMessage", message);
        return;
    }
    let prefix = cx.api.svc.prefix();
    let action = cx
        .api
        .name
        .trim_end_matches(|c: char| c.is_ascii_digit() || c == 'v');
    let account = &cx.account.id;
    let resource = format!("arn:aws:{prefix}:{}:{account}:*", cx.region);
    let mut text = format!(
        "{message}User: {} is not authorized to perform: {prefix}:{action} on resource: \
         {resource} because no identity-based policy allows the {prefix}:{action} action",
        cx.live.arn
    );
    if cx.api.svc == Svc::Ec2 {
        text.push_str(". Encoded authorization failure message: ");
        let len = rng.gen_range(300..600);
        let mut encoded = Vec::with_capacity(len);
        push_base64(&mut encoded, rng, len);
        text.push_str(&String::from_utf8_lossy(&encoded));
    }
    j.str_field("errorMessage", &text);
}

fn write_additional(j: &mut Json, rng: &mut ChaCha8Rng, cx: &Cx) {
    match cx.api.tail {
        Tail::SignIn => {
            j.obj_field("additionalEventData");
            signin_details(j, cx);
            j.close_obj();
        }
        Tail::Object => {
            j.obj_field("additionalEventData");
            j.str_field("SignatureVersion", "SigV4");
            j.str_field("CipherSuite", "TLS_AES_128_GCM_SHA256");
            let bytes = cx.pick % 2_000_000;
            let (sent, received) = if cx.api.read_only {
                (0, bytes)
            } else {
                (bytes, 0)
            };
            j.num_field("bytesTransferredIn", sent);
            j.str_field("AuthenticationMethod", "AuthHeader");
            j.key("x-amz-id-2");
            j.string_with(|b| push_base64(b, rng, 76));
            j.num_field("bytesTransferredOut", received);
            j.close_obj();
        }
        Tail::RotatedKey => {
            j.obj_field("additionalEventData");
            j.key("keyId");
            kms_key_arn(j, cx);
            j.close_obj();
        }
        Tail::Snapshot => {
            j.obj_field("serviceEventDetails");
            j.key("snapshotId");
            j.string_with(|b| {
                b.extend_from_slice(b"snap-0");
                push_hex(b, cx.pick, 16);
            });
            j.close_obj();
        }
        Tail::None | Tail::Role | Tail::Key => {}
    }
}

fn signin_details(j: &mut Json, cx: &Cx) {
    match cx.api.name {
        "ConsoleLogin" => {
            j.str_field(
                "LoginTo",
                "https://console.aws.amazon.com/console/home?state=hashArgs%23&isauthcode=true",
            );
            j.str_field("MobileVersion", "No");
            j.str_field("MFAUsed", if cx.pick % 3 == 0 { "No" } else { "Yes" });
        }
        "SwitchRole" => {
            j.str_field("SwitchFrom", &cx.live.arn);
            j.str_field("RedirectTo", "https://console.aws.amazon.com/ec2/home");
        }
        _ => j.str_field("MfaType", "Virtual MFA"),
    }
}

fn write_resources(j: &mut Json, cx: &Cx) {
    match cx.api.tail {
        Tail::Role => {
            let (account, role) = assumed_target(cx);
            j.arr_field("resources");
            j.open_obj();
            j.str_field("accountId", account);
            j.str_field("type", "AWS::IAM::Role");
            j.parts_field("ARN", &["arn:aws:iam::", account, ":role/", role]);
            j.close_obj();
            j.close_arr();
        }
        Tail::Object => {
            let bucket = bucket_parts(cx);
            j.arr_field("resources");
            j.open_obj();
            j.str_field("type", "AWS::S3::Object");
            j.key("ARN");
            j.string_with(|b| {
                b.extend_from_slice(b"arn:aws:s3:::");
                bucket.iter().for_each(|p| escape_into(b, p));
                b.push(b'/');
                object_key(b, cx);
            });
            j.close_obj();
            j.open_obj();
            j.str_field("accountId", &cx.account.id);
            j.str_field("type", "AWS::S3::Bucket");
            j.key("ARN");
            let mut arn = vec!["arn:aws:s3:::"];
            arn.extend(bucket);
            j.parts(&arn);
            j.close_obj();
            j.close_arr();
        }
        Tail::Key | Tail::RotatedKey => {
            j.arr_field("resources");
            j.open_obj();
            j.str_field("accountId", &cx.account.id);
            j.str_field("type", "AWS::KMS::Key");
            j.key("ARN");
            kms_key_arn(j, cx);
            j.close_obj();
            j.close_arr();
        }
        Tail::None | Tail::SignIn | Tail::Snapshot => {}
    }
}

// ---------------------------------------------------------------------------
// Resources named consistently within a record.

fn bucket_parts<'a>(cx: &'a Cx) -> [&'a str; 5] {
    let purpose = BUCKETS[(cx.pick % BUCKETS.len() as u64) as usize];
    [cx.world.company, "-", cx.account.env, "-", purpose]
}

fn object_key(b: &mut Vec<u8>, cx: &Cx) {
    let prefix =
        OBJECT_PREFIXES[((cx.pick >> 8) % OBJECT_PREFIXES.len() as u64) as usize];
    escape_into(b, prefix);
    push_hex(b, cx.pick >> 16, 12);
    b.extend_from_slice(b".json.gz");
}

fn assumed_target<'a>(cx: &'a Cx) -> (&'a str, &'static str) {
    let accounts = &cx.world.accounts;
    let account = &accounts[(cx.pick % accounts.len() as u64) as usize];
    let role = TARGET_ROLES[((cx.pick >> 8) % TARGET_ROLES.len() as u64) as usize];
    (&account.id, role)
}

fn kms_key_arn(j: &mut Json, cx: &Cx) {
    let key = cx.pick % 4 + 1;
    let high = cx.account.salt ^ key.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let low = cx.account.salt.rotate_left(29) ^ key;
    let uuid = (u128::from(high) << 64) | u128::from(low);
    j.string_with(|b| {
        b.extend_from_slice(b"arn:aws:kms:");
        escape_into(b, cx.region);
        b.push(b':');
        escape_into(b, &cx.account.id);
        b.extend_from_slice(b":key/");
        push_uuid(b, uuid);
    });
}

fn function_name<'a>(cx: &Cx) -> &'a str {
    FUNCTIONS[((cx.pick >> 4) % FUNCTIONS.len() as u64) as usize]
}

fn person_name<'a>(cx: &Cx) -> [&'a str; 3] {
    let first = FIRST[((cx.pick >> 12) % FIRST.len() as u64) as usize];
    let last = LAST[((cx.pick >> 20) % LAST.len() as u64) as usize];
    [first, ".", last]
}

fn instance_id(b: &mut Vec<u8>, cx: &Cx, k: u32) {
    b.extend_from_slice(b"i-0");
    let id = cx
        .pick
        .wrapping_add(u64::from(k).wrapping_mul(0x2545_f491_4f6c_dd1d));
    push_hex(b, id, 16);
}

// ---------------------------------------------------------------------------
// Request and response shapes.

type Shape = fn(&mut Json, &mut ChaCha8Rng, &Cx);

fn null(j: &mut Json, _: &mut ChaCha8Rng, _: &Cx) {
    j.null();
}

fn ec2_filter(j: &mut Json, rng: &mut ChaCha8Rng, cx: &Cx) {
    j.open_obj();
    if rng.gen_bool(0.5) {
        j.obj_field("filterSet");
        j.close_obj();
        if cx.api.name == "DescribeInstances" {
            j.obj_field("instancesSet");
            j.close_obj();
        }
    } else {
        j.obj_field("filterSet");
        j.arr_field("items");
        for k in 0..cx.items.min(EC2_FILTERS.len() as u32) {
            let filter = (cx.pick as usize + k as usize) % EC2_FILTERS.len();
            j.open_obj();
            j.str_field("name", EC2_FILTERS[filter]);
            j.obj_field("valueSet");
            j.arr_field("items");
            j.open_obj();
            j.key("value");
            ec2_filter_value(j, cx, filter);
            j.close_obj();
            j.close_arr();
            j.close_obj();
            j.close_obj();
        }
        j.close_arr();
        j.close_obj();
    }
    j.close_obj();
}

fn ec2_filter_value(j: &mut Json, cx: &Cx, filter: usize) {
    match filter {
        0 => j.str(cx.account.env),
        1 => j.str("running"),
        2 => j.parts(&[cx.account.env, "-", function_name(cx)]),
        3 => j.string_with(|b| {
            b.extend_from_slice(b"vpc-0");
            push_hex(b, cx.account.salt >> 5, 16);
        }),
        _ => j.str(TEAMS[(cx.pick % TEAMS.len() as u64) as usize]),
    }
}

fn instance_ids(j: &mut Json, _: &mut ChaCha8Rng, cx: &Cx) {
    j.open_obj();
    j.obj_field("instancesSet");
    j.arr_field("items");
    for k in 0..cx.items {
        j.open_obj();
        j.key("instanceId");
        j.string_with(|b| instance_id(b, cx, k));
        j.close_obj();
    }
    j.close_arr();
    j.close_obj();
    if cx.api.name == "DescribeInstanceStatus" {
        j.bool_field("includeAllInstances", true);
    }
    j.close_obj();
}

fn launched(cx: &Cx) -> u32 {
    cx.items.min(4)
}

fn run_instances_request(j: &mut Json, rng: &mut ChaCha8Rng, cx: &Cx) {
    let n = launched(cx);
    j.open_obj();
    j.obj_field("instancesSet");
    j.arr_field("items");
    j.open_obj();
    j.key("imageId");
    j.string_with(|b| {
        b.extend_from_slice(b"ami-0");
        push_hex(b, cx.account.salt, 16);
    });
    j.num_field("minCount", n.into());
    j.num_field("maxCount", n.into());
    j.close_obj();
    j.close_arr();
    j.close_obj();
    j.str_field("instanceType", INSTANCE_TYPES[(cx.pick % 6) as usize]);
    j.obj_field("blockDeviceMapping");
    j.close_obj();
    j.obj_field("monitoring");
    j.bool_field("enabled", false);
    j.close_obj();
    j.bool_field("disableApiTermination", false);
    j.bool_field("disableApiStop", false);
    j.key("clientToken");
    j.uuid(rng.gen());
    j.key("subnetId");
    j.string_with(|b| {
        b.extend_from_slice(b"subnet-0");
        push_hex(b, cx.account.salt >> 3, 16);
    });
    j.obj_field("tagSpecificationSet");
    j.arr_field("items");
    j.open_obj();
    j.str_field("resourceType", "instance");
    tags(j, cx);
    j.close_obj();
    j.close_arr();
    j.close_obj();
    j.close_obj();
}

fn tags(j: &mut Json, cx: &Cx) {
    j.arr_field("tags");
    j.open_obj();
    j.str_field("key", "Name");
    j.parts_field("value", &[cx.account.env, "-", function_name(cx)]);
    j.close_obj();
    j.open_obj();
    j.str_field("key", "team");
    j.str_field("value", TEAMS[(cx.pick % TEAMS.len() as u64) as usize]);
    j.close_obj();
    j.close_arr();
}

fn run_instances_response(j: &mut Json, rng: &mut ChaCha8Rng, cx: &Cx) {
    j.open_obj();
    j.key("requestId");
    j.uuid(rng.gen());
    j.key("reservationId");
    j.string_with(|b| {
        b.extend_from_slice(b"r-0");
        push_hex(b, cx.pick.rotate_left(11), 16);
    });
    j.str_field("ownerId", &cx.account.id);
    j.obj_field("groupSet");
    j.close_obj();
    j.obj_field("instancesSet");
    j.arr_field("items");
    for k in 0..launched(cx) {
        instance_item(j, rng, cx, k);
    }
    j.close_arr();
    j.close_obj();
    j.close_obj();
}

fn instance_item(j: &mut Json, rng: &mut ChaCha8Rng, cx: &Cx, k: u32) {
    let ip = format!(
        "10.{}.{}.{}",
        k % 64,
        rng.gen::<u8>(),
        rng.gen_range(1..255u8)
    );
    j.open_obj();
    j.key("instanceId");
    j.string_with(|b| instance_id(b, cx, k));
    j.key("imageId");
    j.string_with(|b| {
        b.extend_from_slice(b"ami-0");
        push_hex(b, cx.account.salt, 16);
    });
    j.obj_field("instanceState");
    j.num_field("code", 0);
    j.str_field("name", "pending");
    j.close_obj();
    j.parts_field(
        "privateDnsName",
        &[
            "ip-",
            &ip.replace('.', "-"),
            ".",
            cx.region,
            ".compute.internal",
        ],
    );
    j.num_field("amiLaunchIndex", k.into());
    j.obj_field("productCodes");
    j.close_obj();
    j.str_field("instanceType", INSTANCE_TYPES[(cx.pick % 6) as usize]);
    j.key("launchTime");
    j.num(cx.time as u64 * 1000);
    j.obj_field("placement");
    j.parts_field("availabilityZone", &[cx.region, "a"]);
    j.str_field("tenancy", "default");
    j.close_obj();
    j.obj_field("monitoring");
    j.str_field("state", "disabled");
    j.close_obj();
    j.key("subnetId");
    j.string_with(|b| {
        b.extend_from_slice(b"subnet-0");
        push_hex(b, cx.account.salt >> 3, 16);
    });
    j.key("vpcId");
    j.string_with(|b| {
        b.extend_from_slice(b"vpc-0");
        push_hex(b, cx.account.salt >> 5, 16);
    });
    j.str_field("privateIpAddress", &ip);
    j.obj_field("stateReason");
    j.str_field("code", "pending");
    j.str_field("message", "pending");
    j.close_obj();
    j.str_field("architecture", "x86_64");
    j.str_field("rootDeviceType", "ebs");
    j.str_field("rootDeviceName", "/dev/xvda");
    j.obj_field("blockDeviceMapping");
    j.close_obj();
    j.str_field("virtualizationType", "hvm");
    j.str_field("hypervisor", "xen");
    j.obj_field("tagSet");
    j.arr_field("items");
    j.open_obj();
    j.str_field("key", "Name");
    j.parts_field("value", &[cx.account.env, "-", function_name(cx)]);
    j.close_obj();
    j.close_arr();
    j.close_obj();
    j.obj_field("groupSet");
    j.arr_field("items");
    j.open_obj();
    j.key("groupId");
    j.string_with(|b| {
        b.extend_from_slice(b"sg-0");
        push_hex(b, cx.account.salt >> 7, 16);
    });
    j.parts_field("groupName", &[cx.account.env, "-default"]);
    j.close_obj();
    j.close_arr();
    j.close_obj();
    j.bool_field("sourceDestCheck", true);
    j.bool_field("ebsOptimized", false);
    j.obj_field("cpuOptions");
    j.num_field("coreCount", 1);
    j.num_field("threadsPerCore", 2);
    j.close_obj();
    j.obj_field("capacityReservationSpecification");
    j.str_field("capacityReservationPreference", "open");
    j.close_obj();
    j.obj_field("enclaveOptions");
    j.bool_field("enabled", false);
    j.close_obj();
    j.obj_field("metadataOptions");
    j.str_field("state", "pending");
    j.str_field("httpTokens", "required");
    j.num_field("httpPutResponseHopLimit", 2);
    j.str_field("httpEndpoint", "enabled");
    j.str_field("httpProtocolIpv4", "enabled");
    j.str_field("httpProtocolIpv6", "disabled");
    j.str_field("instanceMetadataTags", "disabled");
    j.close_obj();
    j.obj_field("maintenanceOptions");
    j.str_field("autoRecovery", "default");
    j.close_obj();
    j.obj_field("privateDnsNameOptions");
    j.str_field("hostnameType", "ip-name");
    j.bool_field("enableResourceNameDnsARecord", false);
    j.bool_field("enableResourceNameDnsAAAARecord", false);
    j.close_obj();
    j.close_obj();
}

fn instance_states(j: &mut Json, rng: &mut ChaCha8Rng, cx: &Cx) {
    let (from, to) = match cx.api.name {
        "StartInstances" => ((80, "stopped"), (0, "pending")),
        "StopInstances" => ((16, "running"), (64, "stopping")),
        _ => ((16, "running"), (32, "shutting-down")),
    };
    j.open_obj();
    j.key("requestId");
    j.uuid(rng.gen());
    j.obj_field("instancesSet");
    j.arr_field("items");
    for k in 0..cx.items {
        j.open_obj();
        j.key("instanceId");
        j.string_with(|b| instance_id(b, cx, k));
        for (field, (code, name)) in [("currentState", to), ("previousState", from)] {
            j.obj_field(field);
            j.num_field("code", code);
            j.str_field("name", name);
            j.close_obj();
        }
        j.close_obj();
    }
    j.close_arr();
    j.close_obj();
    j.close_obj();
}

fn create_tags(j: &mut Json, _: &mut ChaCha8Rng, cx: &Cx) {
    j.open_obj();
    j.obj_field("resourcesSet");
    j.arr_field("items");
    for k in 0..cx.items {
        j.open_obj();
        j.key("resourceId");
        j.string_with(|b| instance_id(b, cx, k));
        j.close_obj();
    }
    j.close_arr();
    j.close_obj();
    j.obj_field("tagSet");
    j.arr_field("items");
    j.open_obj();
    j.str_field("key", "team");
    j.str_field("value", TEAMS[(cx.pick % TEAMS.len() as u64) as usize]);
    j.close_obj();
    j.close_arr();
    j.close_obj();
    j.close_obj();
}

fn ec2_return(j: &mut Json, rng: &mut ChaCha8Rng, _: &Cx) {
    j.open_obj();
    j.key("requestId");
    j.uuid(rng.gen());
    j.bool_field("_return", true);
    j.close_obj();
}

fn ingress_request(j: &mut Json, _: &mut ChaCha8Rng, cx: &Cx) {
    let port = INGRESS_PORTS[(cx.pick % INGRESS_PORTS.len() as u64) as usize];
    j.open_obj();
    j.key("groupId");
    j.string_with(|b| {
        b.extend_from_slice(b"sg-0");
        push_hex(b, cx.pick, 16);
    });
    j.obj_field("ipPermissions");
    j.arr_field("items");
    j.open_obj();
    j.str_field("ipProtocol", "tcp");
    j.num_field("fromPort", port);
    j.num_field("toPort", port);
    j.obj_field("groups");
    j.close_obj();
    j.obj_field("ipRanges");
    j.arr_field("items");
    j.open_obj();
    j.str_field("cidrIp", "0.0.0.0/0");
    j.close_obj();
    j.close_arr();
    j.close_obj();
    j.obj_field("ipv6Ranges");
    j.close_obj();
    j.obj_field("prefixListIds");
    j.close_obj();
    j.close_obj();
    j.close_arr();
    j.close_obj();
    j.close_obj();
}

fn ingress_response(j: &mut Json, rng: &mut ChaCha8Rng, cx: &Cx) {
    let port = INGRESS_PORTS[(cx.pick % INGRESS_PORTS.len() as u64) as usize];
    j.open_obj();
    j.key("requestId");
    j.uuid(rng.gen());
    j.bool_field("_return", true);
    j.obj_field("securityGroupRuleSet");
    j.arr_field("items");
    j.open_obj();
    j.str_field("groupOwnerId", &cx.account.id);
    j.key("groupId");
    j.string_with(|b| {
        b.extend_from_slice(b"sg-0");
        push_hex(b, cx.pick, 16);
    });
    j.key("securityGroupRuleId");
    j.string_with(|b| {
        b.extend_from_slice(b"sgr-0");
        push_hex(b, rng.gen(), 16);
    });
    j.bool_field("isEgress", false);
    j.str_field("ipProtocol", "tcp");
    j.num_field("fromPort", port);
    j.num_field("toPort", port);
    j.str_field("cidrIpv4", "0.0.0.0/0");
    j.close_obj();
    j.close_arr();
    j.close_obj();
    j.close_obj();
}

fn s3_host(j: &mut Json, _: &mut ChaCha8Rng, cx: &Cx) {
    j.open_obj();
    j.parts_field("Host", &["s3.", cx.region, ".amazonaws.com"]);
    j.close_obj();
}

fn bucket_request(j: &mut Json, cx: &Cx, subresource: &str) {
    let bucket = bucket_parts(cx);
    j.open_obj();
    j.parts_field("bucketName", &bucket);
    let mut host = bucket.to_vec();
    host.extend([".s3.", cx.region, ".amazonaws.com"]);
    j.key("Host");
    j.parts(&host);
    if !subresource.is_empty() {
        j.str_field(subresource, "");
    }
    j.close_obj();
}

fn bucket_acl(j: &mut Json, _: &mut ChaCha8Rng, cx: &Cx) {
    bucket_request(j, cx, "acl");
}

fn bucket_policy(j: &mut Json, _: &mut ChaCha8Rng, cx: &Cx) {
    bucket_request(j, cx, "policy");
}

fn bucket_location(j: &mut Json, _: &mut ChaCha8Rng, cx: &Cx) {
    bucket_request(j, cx, "location");
}

fn bucket_versioning(j: &mut Json, _: &mut ChaCha8Rng, cx: &Cx) {
    bucket_request(j, cx, "versioning");
}

fn object_request(j: &mut Json, _: &mut ChaCha8Rng, cx: &Cx) {
    let bucket = bucket_parts(cx);
    j.open_obj();
    j.parts_field("bucketName", &bucket);
    let mut host = bucket.to_vec();
    host.extend([".s3.", cx.region, ".amazonaws.com"]);
    j.key("Host");
    j.parts(&host);
    j.key("key");
    j.string_with(|b| object_key(b, cx));
    j.close_obj();
}

fn put_bucket_policy(j: &mut Json, _: &mut ChaCha8Rng, cx: &Cx) {
    let bucket = bucket_parts(cx).concat();
    j.open_obj();
    j.str_field("bucketName", &bucket);
    j.parts_field("Host", &[&bucket, ".s3.", cx.region, ".amazonaws.com"]);
    j.str_field("policy", "");
    j.obj_field("bucketPolicy");
    j.str_field("Version", "2012-10-17");
    j.arr_field("Statement");
    j.open_obj();
    j.str_field("Sid", "DenyInsecureTransport");
    j.str_field("Effect", "Deny");
    j.str_field("Principal", "*");
    j.str_field("Action", "s3:*");
    j.arr_field("Resource");
    j.parts(&["arn:aws:s3:::", &bucket]);
    j.parts(&["arn:aws:s3:::", &bucket, "/*"]);
    j.close_arr();
    j.obj_field("Condition");
    j.obj_field("Bool");
    j.str_field("aws:SecureTransport", "false");
    j.close_obj();
    j.close_obj();
    j.close_obj();
    j.close_arr();
    j.close_obj();
    j.close_obj();
}

fn user_name(j: &mut Json, _: &mut ChaCha8Rng, cx: &Cx) {
    j.open_obj();
    j.parts_field("userName", &person_name(cx));
    j.close_obj();
}

fn role_name(j: &mut Json, _: &mut ChaCha8Rng, cx: &Cx) {
    j.open_obj();
    j.str_field("roleName", assumed_target(cx).1);
    j.close_obj();
}

fn paging(j: &mut Json, rng: &mut ChaCha8Rng, cx: &Cx) {
    match cx.pick % 10 {
        0..=3 => j.null(),
        4..=7 => {
            j.open_obj();
            j.num_field("maxItems", 100);
            j.close_obj();
        }
        _ => {
            j.open_obj();
            j.num_field("maxResults", 50);
            j.key("nextToken");
            let len = rng.gen_range(40..240);
            j.string_with(|b| push_base64(b, rng, len));
            j.close_obj();
        }
    }
}

fn assume_role_request(j: &mut Json, _: &mut ChaCha8Rng, cx: &Cx) {
    let (account, role) = assumed_target(cx);
    j.open_obj();
    j.parts_field("roleArn", &["arn:aws:iam::", account, ":role/", role]);
    j.key("roleSessionName");
    assumed_session(j, cx);
    j.num_field("durationSeconds", 3600);
    j.close_obj();
}

/// The session name a role assumption asks for: what the caller is.
fn assumed_session(j: &mut Json, cx: &Cx) {
    match cx.who.invoked_by {
        Some("ec2.amazonaws.com") => j.string_with(|b| instance_id(b, cx, 0)),
        Some("lambda.amazonaws.com") => j.str(function_name(cx)),
        Some(_) => j.string_with(|b| push_hex(b, cx.pick, 16)),
        None => j.string_with(|b| {
            b.extend_from_slice(b"botocore-session-");
            push_dec(b, cx.time as u64);
        }),
    }
}

fn credentials(j: &mut Json, rng: &mut ChaCha8Rng, cx: &Cx) {
    j.obj_field("credentials");
    j.key("accessKeyId");
    j.string_with(|b| {
        b.extend_from_slice(b"ASIA");
        push_alnum(b, rng, 16);
    });
    j.key("sessionToken");
    let len = rng.gen_range(540..900);
    j.string_with(|b| push_base64(b, rng, len));
    j.key("expiration");
    j.aws_time(cx.dates, cx.time + HOUR);
    j.close_obj();
}

fn assume_role_response(j: &mut Json, rng: &mut ChaCha8Rng, cx: &Cx) {
    let (account, role) = assumed_target(cx);
    j.open_obj();
    credentials(j, rng, cx);
    j.obj_field("assumedRoleUser");
    j.key("assumedRoleId");
    j.string_with(|b| {
        b.extend_from_slice(b"AROA");
        push_alnum(b, rng, 17);
        b.push(b':');
    });
    j.key("arn");
    j.string_with(|b| {
        b.extend_from_slice(b"arn:aws:sts::");
        escape_into(b, account);
        b.extend_from_slice(b":assumed-role/");
        escape_into(b, role);
        b.push(b'/');
    });
    j.close_obj();
    j.close_obj();
}

fn session_token_request(j: &mut Json, _: &mut ChaCha8Rng, _: &Cx) {
    j.open_obj();
    j.num_field("durationSeconds", 43_200);
    j.close_obj();
}

fn session_token_response(j: &mut Json, rng: &mut ChaCha8Rng, cx: &Cx) {
    j.open_obj();
    credentials(j, rng, cx);
    j.close_obj();
}

fn create_user_request(j: &mut Json, _: &mut ChaCha8Rng, cx: &Cx) {
    j.open_obj();
    j.parts_field("userName", &person_name(cx));
    tags(j, cx);
    j.close_obj();
}

fn create_user_response(j: &mut Json, rng: &mut ChaCha8Rng, cx: &Cx) {
    let name = person_name(cx);
    j.open_obj();
    j.obj_field("user");
    j.str_field("path", "/");
    j.parts_field("userName", &name);
    j.key("userId");
    j.string_with(|b| {
        b.extend_from_slice(b"AIDA");
        push_alnum(b, rng, 17);
    });
    let mut arn = vec!["arn:aws:iam::", &cx.account.id, ":user/"];
    arn.extend(name);
    j.key("arn");
    j.parts(&arn);
    j.key("createDate");
    j.aws_time(cx.dates, cx.time);
    j.close_obj();
    j.close_obj();
}

fn access_key_response(j: &mut Json, rng: &mut ChaCha8Rng, cx: &Cx) {
    j.open_obj();
    j.obj_field("accessKey");
    j.parts_field("userName", &person_name(cx));
    j.key("accessKeyId");
    j.string_with(|b| {
        b.extend_from_slice(b"AKIA");
        push_alnum(b, rng, 16);
    });
    j.str_field("status", "Active");
    j.key("createDate");
    j.aws_time(cx.dates, cx.time);
    j.close_obj();
    j.close_obj();
}

fn attach_policy(j: &mut Json, _: &mut ChaCha8Rng, cx: &Cx) {
    let policy = MANAGED_POLICIES[(cx.pick % MANAGED_POLICIES.len() as u64) as usize];
    j.open_obj();
    j.parts_field("userName", &person_name(cx));
    j.parts_field("policyArn", &["arn:aws:iam::aws:policy/", policy]);
    j.close_obj();
}

/// CloudTrail logs inline policies as pretty-printed JSON inside a string,
/// so this shape exercises string escaping.
fn put_role_policy(j: &mut Json, _: &mut ChaCha8Rng, cx: &Cx) {
    let bucket = bucket_parts(cx).concat();
    let actions = [
        "s3:GetObject",
        "s3:PutObject",
        "s3:ListBucket",
        "kms:Decrypt",
    ];
    let listed: Vec<String> = actions
        .iter()
        .take(1 + (cx.pick % 4) as usize)
        .map(|a| format!("                \"{a}\""))
        .collect();
    let document = format!(
        "{{\n    \"Version\": \"2012-10-17\",\n    \"Statement\": [\n        {{\n            \
         \"Effect\": \"Allow\",\n            \"Action\": [\n{}\n            ],\n            \
         \"Resource\": \"arn:aws:s3:::{bucket}/*\"\n        }}\n    ]\n}}",
        listed.join(",\n")
    );
    j.open_obj();
    j.str_field("roleName", assumed_target(cx).1);
    j.parts_field("policyName", &["inline-", &bucket]);
    j.str_field("policyDocument", &document);
    j.close_obj();
}

fn function_request(j: &mut Json, _: &mut ChaCha8Rng, cx: &Cx) {
    j.open_obj();
    j.str_field("functionName", function_name(cx));
    j.close_obj();
}

fn function_code_request(j: &mut Json, _: &mut ChaCha8Rng, cx: &Cx) {
    let bucket = bucket_parts(cx);
    j.open_obj();
    j.str_field("functionName", function_name(cx));
    j.parts_field("s3Bucket", &bucket);
    j.key("s3Key");
    j.string_with(|b| object_key(b, cx));
    j.bool_field("publish", true);
    j.bool_field("dryRun", false);
    j.close_obj();
}

fn function_config(j: &mut Json, rng: &mut ChaCha8Rng, cx: &Cx) {
    let name = function_name(cx);
    let account = &cx.account.id;
    j.open_obj();
    j.str_field("functionName", name);
    j.parts_field(
        "functionArn",
        &[
            "arn:aws:lambda:",
            cx.region,
            ":",
            account,
            ":function:",
            name,
        ],
    );
    j.str_field("runtime", "python3.12");
    j.parts_field("role", &["arn:aws:iam::", account, ":role/", name, "-role"]);
    j.str_field("handler", "app.handler");
    j.num_field("codeSize", cx.pick % 50_000_000);
    j.str_field("description", "");
    j.num_field("timeout", 30);
    j.num_field("memorySize", 512);
    j.key("lastModified");
    j.string_with(|b| push_lambda_time(b, cx.dates, cx.time));
    j.key("codeSha256");
    j.string_with(|b| {
        push_base64(b, rng, 43);
        b.push(b'=');
    });
    j.str_field("version", "$LATEST");
    j.obj_field("tracingConfig");
    j.str_field("mode", "PassThrough");
    j.close_obj();
    j.key("revisionId");
    j.uuid(rng.gen());
    j.str_field("state", "Active");
    j.str_field("lastUpdateStatus", "InProgress");
    j.str_field("lastUpdateStatusReason", "The function is being created.");
    j.str_field("lastUpdateStatusReasonCode", "Creating");
    j.str_field("packageType", "Zip");
    j.arr_field("architectures");
    j.str("x86_64");
    j.close_arr();
    j.obj_field("ephemeralStorage");
    j.num_field("size", 512);
    j.close_obj();
    j.obj_field("snapStart");
    j.str_field("applyOn", "None");
    j.str_field("optimizationStatus", "Off");
    j.close_obj();
    j.obj_field("loggingConfig");
    j.str_field("logFormat", "Text");
    j.parts_field("logGroup", &["/aws/lambda/", name]);
    j.close_obj();
    j.close_obj();
}

fn log_prefix(j: &mut Json, _: &mut ChaCha8Rng, cx: &Cx) {
    j.open_obj();
    if cx.pick % 2 == 0 {
        j.str_field("logGroupNamePrefix", "/aws/lambda/");
    } else {
        j.num_field("limit", 50);
    }
    j.close_obj();
}

fn log_group(j: &mut Json, _: &mut ChaCha8Rng, cx: &Cx) {
    j.open_obj();
    j.parts_field("logGroupName", &["/aws/lambda/", function_name(cx)]);
    j.str_field("orderBy", "LastEventTime");
    j.bool_field("descending", true);
    j.num_field("limit", 1);
    j.close_obj();
}

fn log_stream(j: &mut Json, rng: &mut ChaCha8Rng, cx: &Cx) {
    let day = cx.dates.day(cx.time);
    j.open_obj();
    j.parts_field("logGroupName", &["/aws/lambda/", function_name(cx)]);
    j.key("logStreamName");
    j.string_with(|b| {
        for (i, part) in day.iso.split(|&c| c == b'-').enumerate() {
            if i > 0 {
                b.push(b'/');
            }
            b.extend_from_slice(part);
        }
        b.extend_from_slice(b"/[$LATEST]");
        push_hex(b, rng.gen(), 16);
        push_hex(b, rng.gen(), 16);
    });
    j.close_obj();
}

fn metric_data(j: &mut Json, _: &mut ChaCha8Rng, cx: &Cx) {
    j.open_obj();
    j.arr_field("metricDataQueries");
    for k in 0..cx.items.min(10) {
        let (namespace, metric, dimension) = METRICS[((cx.pick >> k) % 4) as usize];
        j.open_obj();
        j.key("id");
        j.string_with(|b| {
            b.push(b'm');
            push_dec(b, k.into());
        });
        j.obj_field("metricStat");
        j.obj_field("metric");
        j.str_field("namespace", namespace);
        j.str_field("metricName", metric);
        j.arr_field("dimensions");
        j.open_obj();
        j.str_field("name", dimension);
        j.key("value");
        j.string_with(|b| instance_id(b, cx, k));
        j.close_obj();
        j.close_arr();
        j.close_obj();
        j.num_field("period", 300);
        j.str_field("stat", "Average");
        j.close_obj();
        j.bool_field("returnData", true);
        j.close_obj();
    }
    j.close_arr();
    j.key("startTime");
    j.aws_time(cx.dates, cx.time - 3 * HOUR);
    j.key("endTime");
    j.aws_time(cx.dates, cx.time);
    j.close_obj();
}

fn put_alarm(j: &mut Json, _: &mut ChaCha8Rng, cx: &Cx) {
    let (namespace, metric, _) = METRICS[(cx.pick % 4) as usize];
    j.open_obj();
    j.parts_field("alarmName", &[cx.account.env, "-", metric, "-high"]);
    j.str_field("metricName", metric);
    j.str_field("namespace", namespace);
    j.str_field("statistic", "Average");
    j.num_field("period", 300);
    j.num_field("evaluationPeriods", 3);
    j.num_field("threshold", 80);
    j.str_field("comparisonOperator", "GreaterThanThreshold");
    j.arr_field("alarmActions");
    j.parts(&[
        "arn:aws:sns:",
        cx.region,
        ":",
        &cx.account.id,
        ":ops-alerts",
    ]);
    j.close_arr();
    j.close_obj();
}

fn kms_decrypt(j: &mut Json, _: &mut ChaCha8Rng, cx: &Cx) {
    j.open_obj();
    j.str_field("encryptionAlgorithm", "SYMMETRIC_DEFAULT");
    j.obj_field("encryptionContext");
    if cx.pick % 2 == 0 {
        let name = function_name(cx);
        j.parts_field(
            "aws:lambda:FunctionArn",
            &[
                "arn:aws:lambda:",
                cx.region,
                ":",
                &cx.account.id,
                ":function:",
                name,
            ],
        );
    } else {
        let mut arn = vec!["arn:aws:s3:::"];
        arn.extend(bucket_parts(cx));
        j.key("aws:s3:arn");
        j.parts(&arn);
    }
    j.close_obj();
    j.close_obj();
}

fn kms_data_key(j: &mut Json, _: &mut ChaCha8Rng, cx: &Cx) {
    j.open_obj();
    j.key("keyId");
    kms_key_arn(j, cx);
    j.str_field("keySpec", "AES_256");
    j.close_obj();
}

fn kms_key(j: &mut Json, _: &mut ChaCha8Rng, cx: &Cx) {
    j.open_obj();
    j.key("keyId");
    kms_key_arn(j, cx);
    j.close_obj();
}

fn parameter_name(b: &mut Vec<u8>, cx: &Cx, k: u32) {
    let (app, key) =
        PARAMETERS[((cx.pick >> (k % 32)) % PARAMETERS.len() as u64) as usize];
    b.push(b'/');
    escape_into(b, cx.account.env);
    b.push(b'/');
    escape_into(b, app);
    b.push(b'/');
    escape_into(b, key);
}

fn parameter(j: &mut Json, _: &mut ChaCha8Rng, cx: &Cx) {
    j.open_obj();
    j.key("name");
    j.string_with(|b| parameter_name(b, cx, 0));
    j.bool_field("withDecryption", true);
    j.close_obj();
}

fn parameters(j: &mut Json, _: &mut ChaCha8Rng, cx: &Cx) {
    j.open_obj();
    j.arr_field("names");
    for k in 0..cx.items.min(10) {
        j.string_with(|b| parameter_name(b, cx, k));
    }
    j.close_arr();
    j.bool_field("withDecryption", true);
    j.close_obj();
}

fn put_parameter(j: &mut Json, _: &mut ChaCha8Rng, cx: &Cx) {
    j.open_obj();
    j.key("name");
    j.string_with(|b| parameter_name(b, cx, 0));
    j.str_field("type", "SecureString");
    j.bool_field("overwrite", true);
    j.str_field("tier", "Standard");
    j.close_obj();
}

fn parameter_version(j: &mut Json, _: &mut ChaCha8Rng, cx: &Cx) {
    j.open_obj();
    j.num_field("version", cx.pick % 40 + 1);
    j.str_field("tier", "Standard");
    j.close_obj();
}

fn instance_information(j: &mut Json, _: &mut ChaCha8Rng, cx: &Cx) {
    j.open_obj();
    j.arr_field("filters");
    j.open_obj();
    j.str_field("key", "InstanceIds");
    j.arr_field("values");
    for k in 0..cx.items.min(8) {
        j.string_with(|b| instance_id(b, cx, k));
    }
    j.close_arr();
    j.close_obj();
    j.close_arr();
    j.close_obj();
}

fn agent_heartbeat(j: &mut Json, rng: &mut ChaCha8Rng, cx: &Cx) {
    let ip = format!(
        "10.{}.{}.{}",
        cx.pick % 64,
        rng.gen::<u8>(),
        rng.gen_range(1..255u8)
    );
    j.open_obj();
    j.key("instanceId");
    j.string_with(|b| instance_id(b, cx, 0));
    j.str_field("agentVersion", "3.3.380.0");
    j.str_field("agentStatus", "Active");
    j.str_field("platformType", "Linux");
    j.str_field("platformName", "Amazon Linux");
    j.str_field("platformVersion", "2023");
    j.str_field("iPAddress", &ip);
    j.parts_field(
        "computerName",
        &["ip-", &ip.replace('.', "-"), ".ec2.internal"],
    );
    j.str_field("agentName", "amazon-ssm-agent");
    j.parts_field("availabilityZone", &[cx.region, "a"]);
    j.close_obj();
}

fn secret(j: &mut Json, rng: &mut ChaCha8Rng, cx: &Cx) {
    let (app, key) = PARAMETERS[(cx.pick % PARAMETERS.len() as u64) as usize];
    j.open_obj();
    j.key("secretId");
    j.string_with(|b| {
        b.extend_from_slice(b"arn:aws:secretsmanager:");
        escape_into(b, cx.region);
        b.push(b':');
        escape_into(b, &cx.account.id);
        b.extend_from_slice(b":secret:");
        escape_into(b, cx.account.env);
        b.push(b'/');
        escape_into(b, app);
        b.push(b'/');
        escape_into(b, key);
        b.push(b'-');
        push_alnum(b, rng, 6);
    });
    j.close_obj();
}

fn table(j: &mut Json, _: &mut ChaCha8Rng, cx: &Cx) {
    j.open_obj();
    j.parts_field(
        "tableName",
        &[cx.account.env, "-", TABLES[(cx.pick % 5) as usize]],
    );
    j.close_obj();
}

fn repository(j: &mut Json, _: &mut ChaCha8Rng, cx: &Cx) {
    j.open_obj();
    j.str_field("registryId", &cx.account.id);
    j.str_field("repositoryName", function_name(cx));
    j.arr_field("imageIds");
    j.open_obj();
    j.key("imageTag");
    j.string_with(|b| {
        b.push(b'v');
        push_dec(b, cx.pick % 4);
        b.push(b'.');
        push_dec(b, (cx.pick >> 8) % 30);
        b.push(b'.');
        push_dec(b, (cx.pick >> 16) % 12);
    });
    j.close_obj();
    j.close_arr();
    j.arr_field("acceptedMediaTypes");
    j.str("application/vnd.docker.distribution.manifest.v2+json");
    j.str("application/vnd.oci.image.manifest.v1+json");
    j.close_arr();
    j.close_obj();
}

fn target_health(j: &mut Json, _: &mut ChaCha8Rng, cx: &Cx) {
    j.open_obj();
    j.key("targetGroupArn");
    j.string_with(|b| {
        b.extend_from_slice(b"arn:aws:elasticloadbalancing:");
        escape_into(b, cx.region);
        b.push(b':');
        escape_into(b, &cx.account.id);
        b.extend_from_slice(b":targetgroup/");
        escape_into(b, function_name(cx));
        b.push(b'/');
        push_hex(b, cx.pick, 16);
    });
    j.close_obj();
}

fn stack(j: &mut Json, _: &mut ChaCha8Rng, cx: &Cx) {
    j.open_obj();
    j.parts_field("stackName", &[cx.account.env, "-", function_name(cx)]);
    j.close_obj();
}

fn create_stack(j: &mut Json, _: &mut ChaCha8Rng, cx: &Cx) {
    let bucket = bucket_parts(cx).concat();
    j.open_obj();
    j.parts_field("stackName", &[cx.account.env, "-", function_name(cx)]);
    j.key("templateURL");
    j.string_with(|b| {
        b.extend_from_slice(b"https://");
        escape_into(b, &bucket);
        b.extend_from_slice(b".s3.amazonaws.com/templates/");
        object_key(b, cx);
    });
    j.arr_field("capabilities");
    j.str("CAPABILITY_NAMED_IAM");
    j.close_arr();
    j.arr_field("parameters");
    j.open_obj();
    j.str_field("parameterKey", "Environment");
    j.str_field("parameterValue", cx.account.env);
    j.close_obj();
    j.close_arr();
    j.close_obj();
}

fn stack_id(j: &mut Json, rng: &mut ChaCha8Rng, cx: &Cx) {
    j.open_obj();
    j.key("stackId");
    j.string_with(|b| {
        b.extend_from_slice(b"arn:aws:cloudformation:");
        escape_into(b, cx.region);
        b.push(b':');
        escape_into(b, &cx.account.id);
        b.extend_from_slice(b":stack/");
        escape_into(b, cx.account.env);
        b.push(b'-');
        escape_into(b, function_name(cx));
        b.push(b'/');
        push_uuid(b, rng.gen());
    });
    j.close_obj();
}

fn lookup_events(j: &mut Json, _: &mut ChaCha8Rng, cx: &Cx) {
    j.open_obj();
    j.arr_field("lookupAttributes");
    j.open_obj();
    j.str_field("attributeKey", "EventName");
    j.str_field(
        "attributeValue",
        CATALOG[(cx.pick % CATALOG.len() as u64) as usize].name,
    );
    j.close_obj();
    j.close_arr();
    j.num_field("maxResults", 50);
    j.close_obj();
}

fn signin_response(j: &mut Json, _: &mut ChaCha8Rng, cx: &Cx) {
    j.open_obj();
    j.str_field(cx.api.name, "Success");
    j.close_obj();
}

// ---------------------------------------------------------------------------
// The catalog.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Svc {
    Ec2,
    S3,
    Iam,
    Sts,
    Lambda,
    Logs,
    Monitoring,
    Kms,
    Ssm,
    SecretsManager,
    DynamoDb,
    Ecr,
    Rds,
    Elb,
    AutoScaling,
    CloudFormation,
    CloudTrail,
    Signin,
}

impl Svc {
    fn prefix(self) -> &'static str {
        match self {
            Svc::Ec2 => "ec2",
            Svc::S3 => "s3",
            Svc::Iam => "iam",
            Svc::Sts => "sts",
            Svc::Lambda => "lambda",
            Svc::Logs => "logs",
            Svc::Monitoring => "monitoring",
            Svc::Kms => "kms",
            Svc::Ssm => "ssm",
            Svc::SecretsManager => "secretsmanager",
            Svc::DynamoDb => "dynamodb",
            Svc::Ecr => "ecr",
            Svc::Rds => "rds",
            Svc::Elb => "elasticloadbalancing",
            Svc::AutoScaling => "autoscaling",
            Svc::CloudFormation => "cloudformation",
            Svc::CloudTrail => "cloudtrail",
            Svc::Signin => "signin",
        }
    }

    fn source(self) -> &'static str {
        match self {
            Svc::Ec2 => "ec2.amazonaws.com",
            Svc::S3 => "s3.amazonaws.com",
            Svc::Iam => "iam.amazonaws.com",
            Svc::Sts => "sts.amazonaws.com",
            Svc::Lambda => "lambda.amazonaws.com",
            Svc::Logs => "logs.amazonaws.com",
            Svc::Monitoring => "monitoring.amazonaws.com",
            Svc::Kms => "kms.amazonaws.com",
            Svc::Ssm => "ssm.amazonaws.com",
            Svc::SecretsManager => "secretsmanager.amazonaws.com",
            Svc::DynamoDb => "dynamodb.amazonaws.com",
            Svc::Ecr => "ecr.amazonaws.com",
            Svc::Rds => "rds.amazonaws.com",
            Svc::Elb => "elasticloadbalancing.amazonaws.com",
            Svc::AutoScaling => "autoscaling.amazonaws.com",
            Svc::CloudFormation => "cloudformation.amazonaws.com",
            Svc::CloudTrail => "cloudtrail.amazonaws.com",
            Svc::Signin => "signin.amazonaws.com",
        }
    }

    /// Global services log to us-east-1 and have one endpoint.
    fn is_global(self) -> bool {
        matches!(self, Svc::Iam | Svc::Signin)
    }

    fn event_version(self) -> &'static str {
        match self {
            Svc::Ec2 | Svc::Iam | Svc::S3 | Svc::SecretsManager => "1.09",
            _ => "1.08",
        }
    }

    /// Error code and message (or, for a denial, the message's start).
    fn failure(self, failure: Failure) -> (&'static str, &'static str) {
        match (failure, self) {
            (Failure::Denied, Svc::Ec2) => (
                "Client.UnauthorizedOperation",
                "You are not authorized to perform this operation. ",
            ),
            (Failure::Denied, Svc::Iam | Svc::Sts | Svc::S3 | Svc::Monitoring) => {
                ("AccessDenied", "")
            }
            (Failure::Denied, _) => ("AccessDeniedException", ""),
            (Failure::Throttled, Svc::Ec2) => {
                ("Client.RequestLimitExceeded", "Request limit exceeded.")
            }
            (
                Failure::Throttled,
                Svc::Iam
                | Svc::Sts
                | Svc::CloudFormation
                | Svc::Elb
                | Svc::AutoScaling
                | Svc::Rds
                | Svc::Monitoring,
            ) => ("Throttling", "Rate exceeded"),
            (Failure::Throttled, _) => ("ThrottlingException", "Rate exceeded"),
            (Failure::Missing, Svc::Ec2) => (
                "Client.InvalidInstanceID.NotFound",
                "The instance ID does not exist",
            ),
            (Failure::Missing, Svc::S3) => {
                ("NoSuchBucketPolicy", "The bucket policy does not exist")
            }
            (Failure::Missing, Svc::Iam) => (
                "NoSuchEntityException",
                "The specified entity cannot be found.",
            ),
            (Failure::Missing, Svc::Ssm) => ("ParameterNotFound", ""),
            (Failure::Missing, Svc::SecretsManager) => (
                "ResourceNotFoundException",
                "Secrets Manager can't find the specified secret.",
            ),
            (Failure::Missing, _) => {
                ("ResourceNotFoundException", "Requested resource not found")
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Management,
    /// S3 object calls: data events.
    Data,
    ServiceEvent,
    SignIn,
}

impl Class {
    fn event_type(self) -> &'static str {
        match self {
            Class::Management | Class::Data => "AwsApiCall",
            Class::ServiceEvent => "AwsServiceEvent",
            Class::SignIn => "AwsConsoleSignIn",
        }
    }

    /// Whether the detector counts the record (an `AwsApiCall`).
    fn counts(self) -> bool {
        matches!(self, Class::Management | Class::Data)
    }
}

/// Fields after `responseElements` that some calls have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tail {
    None,
    /// `resources` naming the assumed role.
    Role,
    /// S3 `additionalEventData` and object and bucket `resources`.
    Object,
    /// `resources` naming a KMS key.
    Key,
    RotatedKey,
    Snapshot,
    SignIn,
}

/// Who makes a call, as bits of `Api::users`.
const HUMAN: u8 = 1;
const AUTOMATION: u8 = 2;
const LINKED: u8 = 4;
const SVC: u8 = 8;
/// Calls someone enumerating an account makes: the spikes.
const RECON: u8 = 16;

struct Api {
    svc: Svc,
    name: &'static str,
    read_only: bool,
    /// Popularity across the whole catalog.
    weight: u32,
    users: u8,
    class: Class,
    tail: Tail,
    request: Shape,
    response: Shape,
}

const fn read(
    svc: Svc,
    name: &'static str,
    weight: u32,
    users: u8,
    request: Shape,
) -> Api {
    Api {
        svc,
        name,
        read_only: true,
        weight,
        users,
        class: Class::Management,
        tail: Tail::None,
        request,
        response: null,
    }
}

const fn write(
    svc: Svc,
    name: &'static str,
    weight: u32,
    users: u8,
    request: Shape,
    response: Shape,
) -> Api {
    Api {
        read_only: false,
        response,
        ..read(svc, name, weight, users, request)
    }
}

const fn with(api: Api, class: Class, tail: Tail) -> Api {
    Api { class, tail, ..api }
}

const H: u8 = HUMAN;
const A: u8 = AUTOMATION;
const L: u8 = LINKED;
const R: u8 = RECON;

static CATALOG: &[Api] = &[
    read(Svc::Ec2, "DescribeInstances", 20, H | A | L | R, ec2_filter),
    read(
        Svc::Ec2,
        "DescribeInstanceStatus",
        15,
        H | A | L,
        instance_ids,
    ),
    read(
        Svc::Ec2,
        "DescribeSecurityGroups",
        12,
        H | A | R,
        ec2_filter,
    ),
    read(Svc::Ec2, "DescribeVolumes", 10, H | A, ec2_filter),
    read(Svc::Ec2, "DescribeSubnets", 8, H | A | L, ec2_filter),
    read(Svc::Ec2, "DescribeVpcs", 6, H | A | R, ec2_filter),
    read(Svc::Ec2, "DescribeImages", 6, H | A, ec2_filter),
    read(Svc::Ec2, "DescribeRegions", 4, H | A | R, ec2_filter),
    read(Svc::Ec2, "DescribeNetworkInterfaces", 10, A | L, ec2_filter),
    read(Svc::Ec2, "DescribeSnapshots", 4, H | R, ec2_filter),
    write(
        Svc::Ec2,
        "RunInstances",
        2,
        H | A,
        run_instances_request,
        run_instances_response,
    ),
    write(
        Svc::Ec2,
        "StartInstances",
        1,
        H | A,
        instance_ids,
        instance_states,
    ),
    write(
        Svc::Ec2,
        "StopInstances",
        1,
        H | A,
        instance_ids,
        instance_states,
    ),
    write(
        Svc::Ec2,
        "TerminateInstances",
        1,
        A | L,
        instance_ids,
        instance_states,
    ),
    write(
        Svc::Ec2,
        "CreateTags",
        2,
        H | A | L,
        create_tags,
        ec2_return,
    ),
    write(
        Svc::Ec2,
        "AuthorizeSecurityGroupIngress",
        1,
        H | A,
        ingress_request,
        ingress_response,
    ),
    with(
        write(Svc::Ec2, "SharedSnapshotVolumeCreated", 2, SVC, null, null),
        Class::ServiceEvent,
        Tail::Snapshot,
    ),
    read(Svc::S3, "ListBuckets", 8, H | A | R, s3_host),
    read(Svc::S3, "GetBucketLocation", 10, H | A, bucket_location),
    read(Svc::S3, "GetBucketAcl", 6, H | A | SVC | R, bucket_acl),
    read(Svc::S3, "GetBucketPolicy", 5, H | A | R, bucket_policy),
    read(Svc::S3, "GetBucketVersioning", 3, H | A, bucket_versioning),
    write(
        Svc::S3,
        "PutBucketPolicy",
        1,
        H | A,
        put_bucket_policy,
        null,
    ),
    with(
        read(Svc::S3, "GetObject", 8, A, object_request),
        Class::Data,
        Tail::Object,
    ),
    with(
        write(Svc::S3, "PutObject", 5, A, object_request, null),
        Class::Data,
        Tail::Object,
    ),
    read(Svc::Iam, "GetUser", 6, H | A | R, user_name),
    read(Svc::Iam, "ListUsers", 4, H | A | R, paging),
    read(Svc::Iam, "ListRoles", 5, H | A | R, paging),
    read(Svc::Iam, "GetRole", 6, H | A, role_name),
    read(
        Svc::Iam,
        "ListAttachedRolePolicies",
        4,
        H | A | R,
        role_name,
    ),
    read(Svc::Iam, "ListPolicies", 3, H | R, paging),
    read(Svc::Iam, "GetAccountAuthorizationDetails", 1, A | R, paging),
    read(Svc::Iam, "ListAccessKeys", 3, H | R, user_name),
    write(
        Svc::Iam,
        "CreateUser",
        1,
        H | A,
        create_user_request,
        create_user_response,
    ),
    write(
        Svc::Iam,
        "CreateAccessKey",
        1,
        H,
        user_name,
        access_key_response,
    ),
    write(Svc::Iam, "AttachUserPolicy", 1, H | A, attach_policy, null),
    write(Svc::Iam, "PutRolePolicy", 1, H | A, put_role_policy, null),
    with(
        Api {
            response: assume_role_response,
            ..read(Svc::Sts, "AssumeRole", 10, A | SVC, assume_role_request)
        },
        Class::Management,
        Tail::Role,
    ),
    read(Svc::Sts, "GetCallerIdentity", 10, H | A | R, null),
    Api {
        response: session_token_response,
        ..read(Svc::Sts, "GetSessionToken", 2, H, session_token_request)
    },
    read(Svc::Lambda, "ListFunctions20150331", 4, H | A | R, paging),
    read(
        Svc::Lambda,
        "GetFunction20150331v2",
        4,
        H | A,
        function_request,
    ),
    write(
        Svc::Lambda,
        "UpdateFunctionCode20150331v2",
        1,
        A,
        function_code_request,
        function_config,
    ),
    read(Svc::Logs, "DescribeLogGroups", 8, H | A, log_prefix),
    read(Svc::Logs, "DescribeLogStreams", 6, A, log_group),
    write(Svc::Logs, "CreateLogStream", 8, A, log_stream, null),
    read(Svc::Monitoring, "DescribeAlarms", 8, H | A, paging),
    read(Svc::Monitoring, "GetMetricData", 15, A, metric_data),
    write(Svc::Monitoring, "PutMetricAlarm", 1, A, put_alarm, null),
    with(
        read(Svc::Kms, "Decrypt", 12, A, kms_decrypt),
        Class::Management,
        Tail::Key,
    ),
    with(
        read(Svc::Kms, "GenerateDataKey", 8, A, kms_data_key),
        Class::Management,
        Tail::Key,
    ),
    read(Svc::Kms, "DescribeKey", 4, H | A, kms_key),
    read(Svc::Kms, "ListAliases", 2, H | R, paging),
    with(
        write(Svc::Kms, "RotateKey", 1, SVC, null, null),
        Class::ServiceEvent,
        Tail::RotatedKey,
    ),
    read(Svc::Ssm, "GetParameter", 10, A, parameter),
    read(Svc::Ssm, "GetParameters", 5, A, parameters),
    read(
        Svc::Ssm,
        "DescribeInstanceInformation",
        6,
        H | A | L | R,
        instance_information,
    ),
    write(
        Svc::Ssm,
        "UpdateInstanceInformation",
        10,
        A,
        agent_heartbeat,
        null,
    ),
    write(
        Svc::Ssm,
        "PutParameter",
        1,
        H | A,
        put_parameter,
        parameter_version,
    ),
    read(Svc::SecretsManager, "GetSecretValue", 8, A | R, secret),
    read(Svc::SecretsManager, "ListSecrets", 2, H | R, paging),
    read(Svc::SecretsManager, "DescribeSecret", 3, H | A, secret),
    read(Svc::DynamoDb, "DescribeTable", 8, H | A, table),
    read(Svc::DynamoDb, "ListTables", 3, H | A | R, paging),
    read(Svc::Ecr, "GetAuthorizationToken", 8, A | L, null),
    read(Svc::Ecr, "BatchGetImage", 6, A, repository),
    read(Svc::Ecr, "DescribeRepositories", 2, H | R, paging),
    read(Svc::Rds, "DescribeDBInstances", 5, H | A | R, paging),
    read(Svc::Elb, "DescribeLoadBalancers", 5, H | A | L, paging),
    read(Svc::Elb, "DescribeTargetHealth", 8, A | L, target_health),
    read(
        Svc::AutoScaling,
        "DescribeAutoScalingGroups",
        6,
        H | A | L,
        paging,
    ),
    read(Svc::CloudFormation, "DescribeStacks", 6, H | A, stack),
    write(
        Svc::CloudFormation,
        "CreateStack",
        1,
        H | A,
        create_stack,
        stack_id,
    ),
    read(Svc::CloudTrail, "DescribeTrails", 2, H | R, null),
    read(Svc::CloudTrail, "LookupEvents", 3, H | A, lookup_events),
    with(
        write(Svc::Signin, "ConsoleLogin", 14, 0, null, signin_response),
        Class::SignIn,
        Tail::SignIn,
    ),
    with(
        write(Svc::Signin, "SwitchRole", 4, 0, null, signin_response),
        Class::SignIn,
        Tail::SignIn,
    ),
    with(
        write(Svc::Signin, "CheckMfa", 2, 0, null, signin_response),
        Class::SignIn,
        Tail::SignIn,
    ),
];

// ---------------------------------------------------------------------------
// Word lists.

const ENVS: &[&str] = &["prod", "staging", "dev", "shared-services", "security"];
const COMPANIES: &[&str] =
    &["acme", "globex", "initech", "umbrella", "hooli", "vandelay"];
const REGIONS: &[&str] = &[
    "us-east-1",
    "us-east-1",
    "us-east-1",
    "us-west-2",
    "eu-west-1",
    "eu-central-1",
    "ap-southeast-2",
];
const SSO_SETS: &[&str] = &[
    "AdministratorAccess",
    "PowerUserAccess",
    "ReadOnlyAccess",
    "DeveloperAccess",
    "BillingAccess",
];
/// The acting service, its share of the `AWSService` records, and the
/// services whose catalog entries it makes.
const SERVICE_ACTORS: &[(&str, f64, &[Svc])] = &[
    ("ec2.amazonaws.com", 0.30, &[Svc::Sts, Svc::Ec2]),
    ("lambda.amazonaws.com", 0.25, &[Svc::Sts]),
    ("ecs-tasks.amazonaws.com", 0.10, &[Svc::Sts]),
    ("cloudtrail.amazonaws.com", 0.05, &[Svc::S3]),
    ("kms.amazonaws.com", 0.30, &[Svc::Kms]),
];
/// Role, session name, invoking service, path.
const LINKED_ROLES: &[(&str, &str, &str, &str)] = &[
    (
        "AWSServiceRoleForAutoScaling",
        "AutoScaling",
        "autoscaling.amazonaws.com",
        "aws-service-role/autoscaling.amazonaws.com/",
    ),
    (
        "AWSServiceRoleForECS",
        "ecs-service-scheduler",
        "ecs.amazonaws.com",
        "aws-service-role/ecs.amazonaws.com/",
    ),
    (
        "AWSServiceRoleForConfig",
        "AWSConfig-Describe",
        "config.amazonaws.com",
        "aws-service-role/config.amazonaws.com/",
    ),
    (
        "AWSServiceRoleForElasticLoadBalancing",
        "ElasticLoadBalancing",
        "elasticloadbalancing.amazonaws.com",
        "aws-service-role/elasticloadbalancing.amazonaws.com/",
    ),
];
const ROLE_HABITS: &[(&str, Habit)] = &[
    ("eks-node-group", Habit::Instance),
    ("karpenter-controller", Habit::Sdk),
    ("external-dns", Habit::Sdk),
    ("cluster-autoscaler", Habit::Instance),
    ("orders-api-task", Habit::Task),
    ("payments-worker-task", Habit::Task),
    ("image-resizer-role", Habit::Function),
    ("s3-event-router-role", Habit::Function),
    ("nightly-report-role", Habit::Function),
    ("github-actions-deploy", Habit::Pipeline),
    ("terraform-apply", Habit::Pipeline),
    ("datadog-integration", Habit::Instance),
    ("backup-runner", Habit::Instance),
    ("glue-etl-job", Habit::Sdk),
    ("prometheus-exporter", Habit::Instance),
    ("security-scanner", Habit::Instance),
    ("cost-reporter-role", Habit::Function),
    ("log-shipper", Habit::Instance),
];
const SERVICE_USERS: &[&str] = &[
    "svc-terraform",
    "ci-deployer",
    "jenkins",
    "datadog-aws",
    "backup-agent",
    "s3-sync-bot",
    "grafana-cloudwatch",
    "splunk-ingest",
    "legacy-etl",
    "monitoring-probe",
];
const TARGET_ROLES: &[&str] = &[
    "deploy",
    "OrganizationAccountAccessRole",
    "read-only-audit",
    "terraform-state-access",
    "cross-account-backup",
];
const FIRST: &[&str] = &[
    "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy",
    "mallory", "niaj", "olivia", "peggy", "rupert", "sybil", "trent", "victor", "walter",
    "yusuf", "zoe", "amir", "bea", "chen", "dmitri", "elena", "farah", "goran", "hana",
    "igor", "jia", "kofi", "lena", "mateo", "nora", "oskar", "priya", "quinn", "rosa",
    "sven",
];
const LAST: &[&str] = &[
    "smith", "garcia", "kim", "nguyen", "patel", "muller", "rossi", "silva", "novak",
    "tanaka", "okafor", "larsen", "dubois", "kowalski", "haddad", "ivanova", "cohen",
    "murphy", "schmidt", "santos",
];
const BUCKETS: &[&str] = &[
    "logs",
    "artifacts",
    "backups",
    "data-lake",
    "static-assets",
    "terraform-state",
];
const OBJECT_PREFIXES: &[&str] = &[
    "raw/events/part-",
    "exports/daily/report-",
    "uploads/img-",
    "builds/release-",
];
const FUNCTIONS: &[&str] = &[
    "orders-processor",
    "image-resizer",
    "auth-token-refresh",
    "nightly-report",
    "slack-notifier",
    "s3-event-router",
    "invoice-renderer",
];
const TABLES: &[&str] = &[
    "orders",
    "sessions",
    "customers",
    "feature-flags",
    "audit-log",
];
const TEAMS: &[&str] = &["platform", "payments", "data", "growth", "security"];
const INSTANCE_TYPES: &[&str] = &[
    "t3.micro",
    "t3.large",
    "m6i.xlarge",
    "c6g.2xlarge",
    "r6i.large",
    "g5.xlarge",
];
const INGRESS_PORTS: &[u64] = &[22, 443, 3389, 5432, 8080];
const MANAGED_POLICIES: &[&str] = &[
    "ReadOnlyAccess",
    "AmazonS3FullAccess",
    "AdministratorAccess",
    "CloudWatchLogsReadOnlyAccess",
];
const PARAMETERS: &[(&str, &str)] = &[
    ("orders", "db_password"),
    ("orders", "db_host"),
    ("payments", "stripe_api_key"),
    ("auth", "jwt_signing_key"),
    ("data", "warehouse_dsn"),
    ("platform", "datadog_api_key"),
];
const METRICS: &[(&str, &str, &str)] = &[
    ("AWS/EC2", "CPUUtilization", "InstanceId"),
    ("AWS/EC2", "NetworkIn", "InstanceId"),
    ("CWAgent", "mem_used_percent", "InstanceId"),
    ("CWAgent", "disk_used_percent", "InstanceId"),
];
/// Names of the filters `ec2_filter_value` knows values for.
const EC2_FILTERS: &[&str] = &[
    "tag:Environment",
    "instance-state-name",
    "tag:Name",
    "vpc-id",
    "tag:team",
];
const BROWSERS: &[&str] = &[
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) \
     Chrome/124.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) \
     Chrome/123.0.0.0 Safari/537.36 Edg/123.0.2420.81",
    "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4_1) AppleWebKit/605.1.15 (KHTML, like Gecko) \
     Version/17.4.1 Safari/605.1.15",
];
const OFFICE_HOURS: [f64; 24] = [
    0.03, 0.03, 0.03, 0.03, 0.03, 0.05, 0.1, 0.4, 0.9, 1.4, 1.4, 1.4, 1.0, 1.4, 1.4, 1.4,
    1.4, 1.0, 0.5, 0.25, 0.15, 0.08, 0.05, 0.03,
];
const WEEKEND: f64 = 0.1;
/// First octets of addresses: offices, homes, AWS, rented servers.
const OFFICE_NETS: &[u8] = &[81, 85, 92, 176, 198, 203, 212];
const HOME_NETS: &[u8] = &[24, 66, 73, 86, 90, 109];
const AWS_NETS: &[u8] = &[3, 13, 18, 34, 35, 44, 52, 54];
const VPS_NETS: &[u8] = &[45, 91, 185, 193, 194];

fn pick(rng: &mut ChaCha8Rng, list: &[&'static str]) -> &'static str {
    list.choose(rng).copied().unwrap_or_default()
}

fn pick_string(rng: &mut ChaCha8Rng, list: &[String]) -> String {
    list.choose(rng).cloned().unwrap_or_default()
}

fn public_ip(rng: &mut ChaCha8Rng, nets: &[u8]) -> String {
    let first = nets.choose(rng).copied().unwrap_or(52);
    format!(
        "{first}.{}.{}.{}",
        rng.gen::<u8>(),
        rng.gen::<u8>(),
        rng.gen_range(1..255u8)
    )
}

/// Half in the older style, without the `md/` metadata.
fn aws_cli(rng: &mut ChaCha8Rng) -> String {
    if rng.gen_bool(0.5) {
        return format!(
            "aws-cli/2.{}.{} Python/3.11.{} Linux/6.1.{}-{}.amzn2023.x86_64 \
             exe/x86_64.amzn.2023 prompt/off",
            rng.gen_range(9..=13),
            rng.gen_range(0..40),
            rng.gen_range(4..9),
            rng.gen_range(60..90),
            rng.gen_range(100..140),
        );
    }
    format!(
        "aws-cli/2.{}.{} md/awscrt#0.19.{} ua/2.0 os/linux#6.1.{}-{}.amzn2023.x86_64 \
         md/arch#x86_64 lang/python#3.11.{} md/pyimpl#CPython cfg/retry-mode#standard \
         md/installer#exe md/distrib#amzn.2023 md/prompt#off",
        rng.gen_range(13..=15),
        rng.gen_range(0..40),
        rng.gen_range(10..20),
        rng.gen_range(60..90),
        rng.gen_range(100..140),
        rng.gen_range(4..9),
    )
}

/// Mostly in the older style, without the `md/` metadata.
fn boto3(rng: &mut ChaCha8Rng, exec_env: Option<&str>) -> String {
    let minor = rng.gen_range(28..35);
    let patch = rng.gen_range(0..90);
    let env = exec_env.map_or(String::new(), |e| format!(" exec-env/{e}"));
    if rng.gen_bool(0.6) {
        return format!(
            "Boto3/1.{minor}.{patch} Python/3.{}.{} Linux/5.10.{}-{}.amzn2.x86_64{env} \
             Botocore/1.{}.{patch}",
            rng.gen_range(8..12),
            rng.gen_range(0..12),
            rng.gen_range(200..220),
            rng.gen_range(190..210),
            minor + 3,
        );
    }
    format!(
        "Boto3/1.{minor}.{patch} md/Botocore#1.{}.{patch} ua/2.0 os/linux#5.10.{}-{}.amzn2.x86_64 \
         md/arch#x86_64 lang/python#3.{}.{} md/pyimpl#CPython{env} cfg/retry-mode#legacy \
         Botocore/1.{}.{patch}",
        minor + 3,
        rng.gen_range(200..220),
        rng.gen_range(190..210),
        rng.gen_range(9..13),
        rng.gen_range(0..12),
        minor + 3,
    )
}

/// Providers before 5.x's move to the v2 SDK wrote the shorter form.
fn terraform(rng: &mut ChaCha8Rng) -> String {
    if rng.gen_bool(0.5) {
        return format!(
            "Terraform/1.{}.{} (+https://www.terraform.io) terraform-provider-aws/4.{}.0 \
             aws-sdk-go/1.{}.{} (go1.20.{}; linux; amd64)",
            rng.gen_range(3..6),
            rng.gen_range(0..8),
            rng.gen_range(50..68),
            rng.gen_range(44..50),
            rng.gen_range(0..30),
            rng.gen_range(0..9),
        );
    }
    format!(
        "APN/1.0 HashiCorp/1.0 Terraform/1.{}.{} (+https://www.terraform.io) \
         terraform-provider-aws/5.{}.0 (+https://registry.terraform.io/providers/hashicorp/aws) \
         aws-sdk-go-v2/1.{}.{} os/linux lang/go#1.22.{} md/GOOS#linux md/GOARCH#amd64",
        rng.gen_range(5..9),
        rng.gen_range(0..6),
        rng.gen_range(30..50),
        rng.gen_range(24..27),
        rng.gen_range(0..9),
        rng.gen_range(0..5),
    )
}

fn go_sdk(rng: &mut ChaCha8Rng) -> String {
    format!(
        "aws-sdk-go-v2/1.{}.{} os/linux lang/go#1.21.{} md/GOOS#linux md/GOARCH#amd64",
        rng.gen_range(20..27),
        rng.gen_range(0..9),
        rng.gen_range(0..10),
    )
}

fn java_sdk(rng: &mut ChaCha8Rng) -> String {
    format!(
        "aws-sdk-java/2.{}.{} Linux/5.10.{}-{}.amzn2.x86_64 OpenJDK_64-Bit_Server_VM/17.0.{}+7-LTS \
         Java/17.0.{} vendor/Amazon.com_Inc. io/sync http/Apache cfg/retry-mode/legacy",
        rng.gen_range(20..26),
        rng.gen_range(0..30),
        rng.gen_range(200..220),
        rng.gen_range(190..210),
        rng.gen_range(8..11),
        rng.gen_range(8..11),
    )
}

fn node_sdk(rng: &mut ChaCha8Rng) -> String {
    format!(
        "aws-sdk-nodejs/2.{}.0 linux/v18.{}.0 exec-env/AWS_Lambda_nodejs18.x promise",
        rng.gen_range(1500..1600),
        rng.gen_range(15..20),
    )
}

/// The tool of someone enumerating with stolen credentials.
fn attacker_agent(rng: &mut ChaCha8Rng) -> String {
    format!(
        "Boto3/1.{}.0 Python/3.11.{} Linux/6.{}.0-kali{}-amd64 Botocore/1.{}.0",
        rng.gen_range(26..30),
        rng.gen_range(2..8),
        rng.gen_range(3..7),
        rng.gen_range(1..4),
        rng.gen_range(29..33),
    )
}

// ---------------------------------------------------------------------------
// Output framing.

/// Frames records as lines or `Records` batches and buffers them, so that
/// `out` sees few, large writes.
struct Sink<'a> {
    out: &'a mut dyn Write,
    buf: Vec<u8>,
    batch: u32,
    in_batch: u32,
    records: u64,
    bytes: u64,
}

impl<'a> Sink<'a> {
    fn new(out: &'a mut dyn Write, batch: u32) -> Self {
        Self {
            out,
            buf: Vec::with_capacity(FLUSH_BYTES * 2),
            batch,
            in_batch: 0,
            records: 0,
            bytes: 0,
        }
    }

    /// The buffer the next record is appended to.
    fn open_record(&mut self) -> &mut Vec<u8> {
        if self.batch > 0 {
            if self.in_batch == 0 {
                self.buf.extend_from_slice(b"{\"Records\":[");
            } else {
                self.buf.push(b',');
            }
        }
        &mut self.buf
    }

    fn close_record(&mut self) -> io::Result<()> {
        self.records += 1;
        if self.batch == 0 {
            self.buf.push(b'\n');
        } else {
            self.in_batch += 1;
            if self.in_batch == self.batch {
                self.close_batch();
            }
        }
        if self.buf.len() >= FLUSH_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    fn close_batch(&mut self) {
        self.buf.extend_from_slice(b"]}\n");
        self.in_batch = 0;
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.write_all(&self.buf)?;
        self.bytes += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }

    fn finish(&mut self) -> io::Result<()> {
        if self.in_batch > 0 {
            self.close_batch();
        }
        self.flush()?;
        self.out.flush()
    }
}

// ---------------------------------------------------------------------------
// JSON writing.

/// Appends JSON to a byte buffer. It remembers only whether the next value
/// needs a comma, which suffices because containers are written start to
/// end, never interleaved.
struct Json<'a> {
    buf: &'a mut Vec<u8>,
    comma: bool,
}

impl<'a> Json<'a> {
    fn new(buf: &'a mut Vec<u8>) -> Self {
        Self { buf, comma: false }
    }

    fn separate(&mut self) {
        if self.comma {
            self.buf.push(b',');
        }
    }

    /// Keys are literals of this file, none of which needs escaping.
    fn key(&mut self, key: &str) {
        debug_assert!(!key.bytes().any(needs_escape));
        self.separate();
        self.buf.push(b'"');
        self.buf.extend_from_slice(key.as_bytes());
        self.buf.extend_from_slice(b"\":");
        self.comma = false;
    }

    fn open_obj(&mut self) {
        self.separate();
        self.buf.push(b'{');
        self.comma = false;
    }

    fn close_obj(&mut self) {
        self.buf.push(b'}');
        self.comma = true;
    }

    fn open_arr(&mut self) {
        self.separate();
        self.buf.push(b'[');
        self.comma = false;
    }

    fn close_arr(&mut self) {
        self.buf.push(b']');
        self.comma = true;
    }

    fn str(&mut self, value: &str) {
        self.parts(&[value]);
    }

    /// One string made of several pieces, each escaped.
    fn parts(&mut self, parts: &[&str]) {
        self.string_with(|b| parts.iter().for_each(|p| escape_into(b, p)));
    }

    /// One string whose body `body` appends; the body must already be
    /// escaped (hex digits, base64 and decimal digits need nothing).
    fn string_with(&mut self, body: impl FnOnce(&mut Vec<u8>)) {
        self.separate();
        let start = self.buf.len();
        self.buf.push(b'"');
        body(self.buf);
        self.buf.push(b'"');
        debug_assert!(serde_json::from_slice::<String>(&self.buf[start..]).is_ok());
        self.comma = true;
    }

    fn uuid(&mut self, bits: u128) {
        self.string_with(|b| push_uuid(b, bits));
    }

    fn iso_time(&mut self, dates: &DateTable, time: i64) {
        self.string_with(|b| push_iso_time(b, dates, time));
    }

    fn aws_time(&mut self, dates: &DateTable, time: i64) {
        self.string_with(|b| push_aws_time(b, dates, time));
    }

    fn num(&mut self, value: u64) {
        self.separate();
        push_dec(self.buf, value);
        self.comma = true;
    }

    fn null(&mut self) {
        self.separate();
        self.buf.extend_from_slice(b"null");
        self.comma = true;
    }

    /// A value rendered earlier by another `Json`.
    fn raw(&mut self, json: &[u8]) {
        self.separate();
        self.buf.extend_from_slice(json);
        self.comma = true;
    }

    fn str_field(&mut self, key: &str, value: &str) {
        self.key(key);
        self.str(value);
    }

    fn parts_field(&mut self, key: &str, parts: &[&str]) {
        self.key(key);
        self.parts(parts);
    }

    fn num_field(&mut self, key: &str, value: u64) {
        self.key(key);
        self.num(value);
    }

    fn bool_field(&mut self, key: &str, value: bool) {
        self.key(key);
        self.separate();
        self.buf
            .extend_from_slice(if value { b"true" } else { b"false" });
        self.comma = true;
    }

    fn raw_field(&mut self, key: &str, json: &[u8]) {
        self.key(key);
        self.raw(json);
    }

    fn obj_field(&mut self, key: &str) {
        self.key(key);
        self.open_obj();
    }

    fn arr_field(&mut self, key: &str) {
        self.key(key);
        self.open_arr();
    }
}

fn needs_escape(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Appends `text` as the body of a JSON string.
fn escape_into(buf: &mut Vec<u8>, text: &str) {
    let bytes = text.as_bytes();
    let mut clean = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if !needs_escape(b) {
            continue;
        }
        buf.extend_from_slice(&bytes[clean..i]);
        match b {
            b'"' => buf.extend_from_slice(b"\\\""),
            b'\\' => buf.extend_from_slice(b"\\\\"),
            b'\n' => buf.extend_from_slice(b"\\n"),
            b'\r' => buf.extend_from_slice(b"\\r"),
            b'\t' => buf.extend_from_slice(b"\\t"),
            _ => {
                buf.extend_from_slice(b"\\u00");
                buf.push(HEX[usize::from(b >> 4)]);
                buf.push(HEX[usize::from(b & 0xf)]);
            }
        }
        clean = i + 1;
    }
    buf.extend_from_slice(&bytes[clean..]);
}

fn push_dec(buf: &mut Vec<u8>, mut value: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    buf.extend_from_slice(&digits[at..]);
}

fn push_two(buf: &mut Vec<u8>, value: i64) {
    buf.push(b'0' + (value / 10) as u8);
    buf.push(b'0' + (value % 10) as u8);
}

/// The lowest `digits` hex digits of `value`, most significant first.
fn push_hex(buf: &mut Vec<u8>, value: u64, digits: u32) {
    for k in (0..digits).rev() {
        buf.push(HEX[((value >> (4 * (k % 16))) & 0xf) as usize]);
    }
}

fn push_hex_upper(buf: &mut Vec<u8>, value: u64, digits: u32) {
    for k in (0..digits).rev() {
        buf.push(HEX[((value >> (4 * (k % 16))) & 0xf) as usize].to_ascii_uppercase());
    }
}

/// A version-4 UUID made of `bits`.
fn push_uuid(buf: &mut Vec<u8>, bits: u128) {
    let bits = (bits & !(0xf << 76)) | (0x4 << 76);
    let bits = (bits & !(0x3 << 62)) | (0x2 << 62);
    for i in 0..32 {
        if matches!(i, 8 | 12 | 16 | 20) {
            buf.push(b'-');
        }
        buf.push(HEX[((bits >> (124 - 4 * i)) & 0xf) as usize]);
    }
}

const ALNUM: &[u8; 36] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
const BASE64: &[u8; 64] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn push_alnum(buf: &mut Vec<u8>, rng: &mut ChaCha8Rng, len: usize) {
    for _ in 0..len {
        buf.push(ALNUM[rng.gen_range(0..ALNUM.len())]);
    }
}

/// Ten characters from each random word keep long tokens cheap.
fn push_base64(buf: &mut Vec<u8>, rng: &mut ChaCha8Rng, len: usize) {
    let mut left = len;
    while left > 0 {
        let mut word: u64 = rng.gen();
        for _ in 0..left.min(10) {
            buf.push(BASE64[(word & 63) as usize]);
            word >>= 6;
        }
        left -= left.min(10);
    }
}

fn alnum_string(rng: &mut ChaCha8Rng, len: usize) -> String {
    let mut buf = Vec::with_capacity(len);
    push_alnum(&mut buf, rng, len);
    String::from_utf8_lossy(&buf).into_owned()
}

fn hex_string(rng: &mut ChaCha8Rng, len: u32) -> String {
    let mut buf = Vec::with_capacity(len as usize);
    for _ in 0..len.div_ceil(16) {
        push_hex(&mut buf, rng.gen(), 16);
    }
    buf.truncate(len as usize);
    String::from_utf8_lossy(&buf).into_owned()
}

// ---------------------------------------------------------------------------
// Time.

/// Calendar dates of every day a record can name, computed once: from two
/// days before the span (session creation dates) to one day after it
/// (credential expirations).
struct DateTable {
    first_day: i64,
    days: Vec<Day>,
}

struct Day {
    iso: [u8; 10],
    year: i32,
    month: u8,
    day: u8,
}

impl DateTable {
    fn new(span: Span) -> anyhow::Result<Self> {
        let first_day = span.start.div_euclid(DAY) - 2;
        let last_day = span.end.div_euclid(DAY) + 1;
        let days = (first_day..=last_day)
            .map(Self::calendar)
            .collect::<anyhow::Result<Vec<Day>>>()?;
        Ok(Self { first_day, days })
    }

    fn calendar(day: i64) -> anyhow::Result<Day> {
        let julian = i32::try_from(day + 2_440_588).context("date out of range")?;
        let date = Date::from_julian_day(julian).context("date out of range")?;
        let (year, month, day) = date.to_calendar_date();
        let mut iso = [0u8; 10];
        let text = format!("{year:04}-{:02}-{day:02}", u8::from(month));
        iso.copy_from_slice(text.as_bytes().get(..10).context("year beyond 9999")?);
        Ok(Day {
            iso,
            year,
            month: u8::from(month),
            day,
        })
    }

    /// The day of `time`; times outside the table (none are asked for) get
    /// its nearest end.
    fn day(&self, time: i64) -> &Day {
        let last = self.days.len() as i64 - 1;
        let i = (time.div_euclid(DAY) - self.first_day).clamp(0, last);
        &self.days[i as usize]
    }
}

/// `2024-05-01T13:07:42Z`
fn push_iso_time(buf: &mut Vec<u8>, dates: &DateTable, time: i64) {
    let secs = time.rem_euclid(DAY);
    buf.extend_from_slice(&dates.day(time).iso);
    buf.push(b'T');
    push_clock(buf, secs);
    buf.push(b'Z');
}

fn push_clock(buf: &mut Vec<u8>, secs: i64) {
    push_two(buf, secs / 3600);
    buf.push(b':');
    push_two(buf, secs / 60 % 60);
    buf.push(b':');
    push_two(buf, secs % 60);
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// `May 1, 2024, 1:07:42 PM`, as IAM and STS responses write dates.
fn push_aws_time(buf: &mut Vec<u8>, dates: &DateTable, time: i64) {
    let day = dates.day(time);
    let secs = time.rem_euclid(DAY);
    let month = MONTHS[usize::from(day.month.clamp(1, 12) - 1)];
    buf.extend_from_slice(month.as_bytes());
    buf.push(b' ');
    push_dec(buf, day.day.into());
    buf.extend_from_slice(b", ");
    push_dec(buf, day.year.unsigned_abs().into());
    buf.extend_from_slice(b", ");
    let hour = secs / 3600;
    push_dec(buf, ((hour + 11) % 12 + 1) as u64);
    buf.push(b':');
    push_two(buf, secs / 60 % 60);
    buf.push(b':');
    push_two(buf, secs % 60);
    buf.extend_from_slice(if hour < 12 { b" AM" } else { b" PM" });
}

/// `2024-05-01T13:07:42.000+0000`, as Lambda writes dates.
fn push_lambda_time(buf: &mut Vec<u8>, dates: &DateTable, time: i64) {
    buf.extend_from_slice(&dates.day(time).iso);
    buf.push(b'T');
    push_clock(buf, time.rem_euclid(DAY));
    buf.extend_from_slice(b".000+0000");
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn small() -> GenerateArgs {
        GenerateArgs {
            hours: 48,
            arns: 40,
            rate_per_hour: 300.0,
            ..GenerateArgs::default()
        }
    }

    #[test]
    fn clap_defaults_match_default() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            args: GenerateArgs,
        }
        let parsed = Cli::parse_from(["trailspike"]).args;
        assert_eq!(
            format!("{parsed:?}"),
            format!("{:?}", GenerateArgs::default())
        );
    }

    #[test]
    fn baseline_follows_the_spec_worked_example() {
        let counts = [10, 12, 9, 11, 10, 13, 8, 10, 11, 12, 9, 10, 11, 10, 12, 10];
        let b = counts
            .iter()
            .fold(Baseline::default(), |b, &x| b.updated(f64::from(x)));
        assert_eq!(b.n, 16);
        assert!((b.avg - 10.5).abs() < 1e-9);
        assert!((b.stdev - 1.274755).abs() < 1e-6);
        let after = b.updated(40.0);
        assert!((after.avg - 12.235294).abs() < 1e-6);
        assert!((after.stdev - 7.050485).abs() < 1e-6);
    }

    #[test]
    fn spike_calls_clear_the_rule_even_with_a_small_factor() {
        let history = [10.0, 30.0, 5.0, 25.0, 12.0, 40.0, 8.0, 22.0, 15.0, 35.0];
        let b = history
            .iter()
            .cycle()
            .take(20)
            .fold(Baseline::default(), |b, &x| b.updated(x));
        let calls = spike_calls(b, 20, 1.0);
        assert!(b.clears(calls as f64));
        assert!(calls >= 70);
    }

    #[test]
    fn rhythms_average_to_one_over_a_week() {
        let rhythms = [
            Rhythm::Office {
                tz: -5,
                scale: 1.0 / office_mean(),
            },
            Rhythm::Steady { amp: 0.3, peak: 9 },
            Rhythm::Nightly { at: 3 },
        ];
        for rhythm in rhythms {
            let mean: f64 = (0..168).map(|h| rhythm.factor(h)).sum::<f64>() / 168.0;
            assert!((mean - 1.0).abs() < 1e-9, "{rhythm:?}: {mean}");
        }
    }

    #[test]
    fn every_mix_can_be_built() {
        ApiSets::new().unwrap();
        for &users in &[HUMAN, AUTOMATION, LINKED] {
            let mut rng = ChaCha8Rng::seed_from_u64(7);
            profile(&mut rng, users, 2..=20).unwrap();
        }
        for &(_, _, sources) in SERVICE_ACTORS {
            Picker::matching(|a| a.users & SVC != 0 && sources.contains(&a.svc)).unwrap();
        }
    }

    #[test]
    fn every_catalog_entry_writes_valid_json() {
        let args = small();
        let span = check_args(&args).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let world = World::build(&args, &mut rng).unwrap();
        let dates = DateTable::new(span).unwrap();
        for who in world.identities.iter().take(12) {
            let mut live = Live {
                session: None,
                arn: String::new(),
                user_identity: Vec::new(),
                calls: 0,
                baseline: Baseline::default(),
                spike: None,
            };
            let account = &world.accounts[who.account];
            render(&mut live, who, account, &dates, span.start);
            for api in CATALOG {
                for failure in [None, Some(Failure::Denied), Some(Failure::Missing)] {
                    let mut cx =
                        compose(&mut rng, &world, who, &live, &dates, span.start, None);
                    cx.api = api;
                    cx.failure = failure;
                    cx.items = 7;
                    let mut buf = Vec::new();
                    write_record(&mut Json::new(&mut buf), &mut rng, &cx);
                    let parsed: serde_json::Value = serde_json::from_slice(&buf)
                        .unwrap_or_else(|e| panic!("{}: {e}", api.name));
                    assert_eq!(parsed["eventName"], api.name);
                }
            }
        }
    }

    #[test]
    fn uuids_have_version_and_variant() {
        let mut buf = Vec::new();
        push_uuid(&mut buf, u128::MAX);
        assert_eq!(buf, b"ffffffff-ffff-4fff-bfff-ffffffffffff");
        buf.clear();
        push_uuid(&mut buf, 0);
        assert_eq!(buf, b"00000000-0000-4000-8000-000000000000");
    }

    #[test]
    fn aws_dates_use_a_twelve_hour_clock() {
        let span = Span {
            start: 1_714_521_600,
            end: 1_714_521_600 + DAY,
        };
        let dates = DateTable::new(span).unwrap();
        let mut buf = Vec::new();
        push_aws_time(&mut buf, &dates, 1_714_521_600 + 13 * HOUR + 7 * 60 + 42);
        assert_eq!(String::from_utf8(buf).unwrap(), "May 1, 2024, 1:07:42 PM");
        let mut buf = Vec::new();
        push_aws_time(&mut buf, &dates, 1_714_521_600 + 5);
        assert_eq!(String::from_utf8(buf).unwrap(), "May 1, 2024, 12:00:05 AM");
    }

    #[test]
    fn unaligned_start_is_covered_by_partial_hours() {
        let span = Span {
            start: 1_714_521_600 + 1800,
            end: 1_714_521_600 + 1800 + 2 * HOUR,
        };
        let hours: Vec<Hour> = span.hours().collect();
        assert_eq!(hours.len(), 3);
        assert_eq!(hours[0].lo, span.start);
        assert_eq!(hours[2].hi, span.end);
        assert!(!hours[0].is_full() && hours[1].is_full() && !hours[2].is_full());
    }

    proptest! {
        #[test]
        fn escaped_strings_round_trip(text in any::<String>()) {
            let mut buf = Vec::new();
            Json::new(&mut buf).str(&text);
            let back: String = serde_json::from_slice(&buf).unwrap();
            prop_assert_eq!(back, text);
        }

        #[test]
        fn iso_times_match_the_time_crate(t in 0i64..253_402_300_799 - 3 * DAY) {
            let dates = DateTable::new(Span { start: t, end: t + 1 }).unwrap();
            let mut buf = Vec::new();
            push_iso_time(&mut buf, &dates, t);
            let expected = OffsetDateTime::from_unix_timestamp(t)
                .unwrap()
                .format(&Rfc3339)
                .unwrap();
            prop_assert_eq!(String::from_utf8(buf).unwrap(), expected);
        }
    }
}
