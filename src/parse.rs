//! Stage 1: turn message bytes into the few CloudTrail fields the
//! detection needs (SPEC.md section 1).
//!
//! A message is one CloudTrail record, a `{"Records": [...]}` log file
//! body, or either of those gzip-compressed. Only `eventTime`,
//! `eventType`, `eventName`, `eventID`, `userIdentity.arn` and
//! `userIdentity.invokedBy` are read; every other field is skipped by
//! serde without being built, and the strings that are read borrow from
//! the message unless they contain escapes.
//!
//! Every outcome that is not a counted call carries a reason from a small
//! fixed set, so that a counter and a dead-letter header can name it.

use std::borrow::Cow;
use std::fmt;
use std::io::Read;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Why a message or a record is bad input: it goes to the dead-letter
/// topic with this reason and is counted under it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RejectReason {
    InvalidJson,
    InvalidUtf8,
    NotAnObject,
    MissingEventTime,
    BadEventTime,
    WrongType,
    TooLarge,
    BadGzip,
    FutureSkew,
    /// Not bad input: a late record, dead-lettered only when
    /// `detection.dead_letter_late_records` is on.
    Late,
}

impl RejectReason {
    pub const ALL: [RejectReason; 10] = [
        Self::InvalidJson,
        Self::InvalidUtf8,
        Self::NotAnObject,
        Self::MissingEventTime,
        Self::BadEventTime,
        Self::WrongType,
        Self::TooLarge,
        Self::BadGzip,
        Self::FutureSkew,
        Self::Late,
    ];

    /// Every reason that marks bad input (all but [`RejectReason::Late`]).
    pub fn bad_input() -> impl Iterator<Item = RejectReason> {
        Self::ALL.into_iter().filter(|r| *r != Self::Late)
    }

    /// The label used in metrics and in the dead-letter reason header.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidJson => "invalid_json",
            Self::InvalidUtf8 => "invalid_utf8",
            Self::NotAnObject => "not_an_object",
            Self::MissingEventTime => "missing_event_time",
            Self::BadEventTime => "bad_event_time",
            Self::WrongType => "wrong_type",
            Self::TooLarge => "too_large",
            Self::BadGzip => "bad_gzip",
            Self::FutureSkew => "future_skew",
            Self::Late => "late",
        }
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a well-formed record is not counted. These are normal traffic,
/// not errors: they are counted and dropped, never dead-lettered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SkipReason {
    /// `eventType` is not `AwsApiCall` (console sign-ins, service events).
    NotApiCall,
    /// No `userIdentity.arn`, or an empty one (AWS service identities).
    NoArn,
    /// `userIdentity.invokedBy` is set and `ignore_service_principals` is on.
    InvokedByService,
    /// The same `eventID` was already counted in this window
    /// (`dedupe_event_id`).
    DuplicateEventId,
}

impl SkipReason {
    pub const ALL: [SkipReason; 4] = [
        Self::NotApiCall,
        Self::NoArn,
        Self::InvokedByService,
        Self::DuplicateEventId,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotApiCall => "not_api_call",
            Self::NoArn => "no_arn",
            Self::InvokedByService => "invoked_by_service",
            Self::DuplicateEventId => "duplicate_event_id",
        }
    }
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One API call that the detection counts, borrowed from its message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiCall<'a> {
    /// Event time in whole seconds since the Unix epoch.
    pub event_time: i64,
    pub arn: Cow<'a, str>,
    /// Empty when the record has none; still counted.
    pub event_name: Cow<'a, str>,
    pub event_id: Option<Cow<'a, str>>,
    /// What the call was made of, for the alert's explanation. Not part of
    /// the count: a record that lacks them, or has them of the wrong type,
    /// still counts.
    pub context: CallContext<'a>,
}

/// Fields of a record that explain an alert but do not decide it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallContext<'a> {
    pub source_ip: Option<Cow<'a, str>>,
    pub user_agent: Option<Cow<'a, str>>,
    pub region: Option<Cow<'a, str>>,
    /// Present when the call failed (`AccessDenied`, `ThrottlingException`).
    pub error_code: Option<Cow<'a, str>>,
}

/// What became of one record of a message.
#[derive(Debug, Clone, PartialEq)]
pub enum RecordOutcome<'a> {
    Call(ApiCall<'a>),
    /// A well-formed record that is not counted; its event time still
    /// moves the watermark, because it is evidence of how far the source
    /// has progressed.
    Skipped {
        reason: SkipReason,
        event_time: i64,
    },
    /// A bad record inside a `Records` batch; its neighbours still count.
    Rejected {
        reason: RejectReason,
        detail: String,
    },
}

/// A whole message that cannot be used at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadMessage {
    pub reason: RejectReason,
    /// What the parser said, for the dead-letter header and the log.
    pub detail: String,
}

impl fmt::Display for BadMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.reason, self.detail)
    }
}

impl std::error::Error for BadMessage {}

/// Options of the parse stage that come from config.
#[derive(Debug, Clone, Copy)]
pub struct ParseOptions {
    /// Largest message accepted, after gzip decompression.
    pub max_message_bytes: usize,
    pub ignore_service_principals: bool,
}

impl Default for ParseOptions {
    fn default() -> Self {
        ParseOptions {
            max_message_bytes: 4 * 1024 * 1024,
            ignore_service_principals: false,
        }
    }
}

/// Holds a decompressed copy of a gzip message so that records can borrow
/// from it; plain messages are borrowed as they are.
pub struct MessageBody<'a> {
    bytes: Cow<'a, [u8]>,
}

impl<'a> MessageBody<'a> {
    /// Checks the size and undoes gzip compression.
    pub fn decode(
        message: &'a [u8],
        options: &ParseOptions,
    ) -> Result<MessageBody<'a>, BadMessage> {
        if message.len() > options.max_message_bytes {
            return Err(too_large(message.len(), options.max_message_bytes));
        }
        if !message.starts_with(&GZIP_MAGIC) {
            return Ok(MessageBody {
                bytes: Cow::Borrowed(message),
            });
        }
        gunzip(message, options.max_message_bytes).map(|bytes| MessageBody {
            bytes: Cow::Owned(bytes),
        })
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Parses the body and hands each record's exact bytes and outcome to
    /// `on_record`, in message order. A message that is one record is
    /// handed over whole.
    pub fn for_each_record<'b>(
        &'b self,
        options: &ParseOptions,
        on_record: impl FnMut(&'b [u8], RecordOutcome<'b>),
    ) -> Result<(), BadMessage> {
        parse_body(&self.bytes, options, on_record)
    }
}

fn too_large(size: usize, limit: usize) -> BadMessage {
    BadMessage {
        reason: RejectReason::TooLarge,
        detail: format!(
            "message of {size} bytes exceeds input.max_message_bytes = {limit}"
        ),
    }
}

fn gunzip(message: &[u8], limit: usize) -> Result<Vec<u8>, BadMessage> {
    let mut decoded = Vec::with_capacity(message.len() * 8);
    // Reading one byte past the limit tells "too large" apart from "exactly
    // at the limit" without ever inflating a gzip bomb in full.
    let mut reader = flate2::read::MultiGzDecoder::new(message).take(limit as u64 + 1);
    reader.read_to_end(&mut decoded).map_err(|e| BadMessage {
        reason: RejectReason::BadGzip,
        detail: e.to_string(),
    })?;
    if decoded.len() > limit {
        return Err(too_large(decoded.len(), limit));
    }
    Ok(decoded)
}

fn parse_body<'a>(
    body: &'a [u8],
    options: &ParseOptions,
    mut on_record: impl FnMut(&'a [u8], RecordOutcome<'a>),
) -> Result<(), BadMessage> {
    let top: TopLevel<'a> =
        serde_json::from_slice(body).map_err(|e| classify_json_error(body, &e))?;
    match top.records {
        Some(records) => {
            for raw in records {
                on_record(raw.get().as_bytes(), parse_batched_record(raw, options));
            }
            Ok(())
        }
        None => {
            record_outcome(top.fields, options).map(|outcome| on_record(body, outcome))
        }
    }
}

fn parse_batched_record<'a>(
    raw: &'a RawValue,
    options: &ParseOptions,
) -> RecordOutcome<'a> {
    let parsed = serde_json::from_str::<RecordFields<'a>>(raw.get())
        .map_err(|e| classify_json_error(raw.get().as_bytes(), &e))
        .and_then(|fields| record_outcome(fields, options));
    match parsed {
        Ok(outcome) => outcome,
        Err(bad) => RecordOutcome::Rejected {
            reason: bad.reason,
            detail: bad.detail,
        },
    }
}

fn record_outcome<'a>(
    fields: RecordFields<'a>,
    options: &ParseOptions,
) -> Result<RecordOutcome<'a>, BadMessage> {
    let event_time = match fields.event_time {
        Field::Absent | Field::Null => {
            return Err(BadMessage {
                reason: RejectReason::MissingEventTime,
                detail: "record has no eventTime".into(),
            })
        }
        Field::WrongType => return Err(wrong_type("eventTime")),
        Field::Str(text) => parse_event_time(&text)?,
    };
    let event_type = fields.event_type.into_str("eventType")?;
    let event_name = fields.event_name.into_str("eventName")?;
    let event_id = fields.event_id.into_str("eventID")?;
    let identity = fields.user_identity.unwrap_or_default();
    let arn = identity.arn.into_str("userIdentity.arn")?;
    let invoked_by = identity.invoked_by.into_str("userIdentity.invokedBy")?;
    let context = CallContext {
        source_ip: fields.source_ip.into_context(),
        user_agent: fields.user_agent.into_context(),
        region: fields.region.into_context(),
        error_code: fields.error_code.into_context(),
    };

    let skip = |reason| Ok(RecordOutcome::Skipped { reason, event_time });
    if event_type.as_deref() != Some("AwsApiCall") {
        return skip(SkipReason::NotApiCall);
    }
    let arn = match arn {
        Some(arn) if !arn.is_empty() => arn,
        _ => return skip(SkipReason::NoArn),
    };
    if options.ignore_service_principals && invoked_by.is_some() {
        return skip(SkipReason::InvokedByService);
    }
    Ok(RecordOutcome::Call(ApiCall {
        event_time,
        arn,
        event_name: event_name.unwrap_or_default(),
        event_id,
        context,
    }))
}

/// Turns `arn:aws:sts::ACCOUNT:assumed-role/ROLE/SESSION` into
/// `arn:aws:sts::ACCOUNT:assumed-role/ROLE`; other ARNs stay as they are.
/// Session names churn (one per CI job, per console login), so counting
/// per session gives every session a baseline of one window.
pub fn collapse_session(arn: &mut Cow<'_, str>) {
    let Some(role_end) = role_of_session(arn) else {
        return;
    };
    match arn {
        Cow::Borrowed(text) => *text = &text[..role_end],
        Cow::Owned(text) => text.truncate(role_end),
    }
}

/// The length of the role ARN inside an assumed-role session ARN.
fn role_of_session(arn: &str) -> Option<usize> {
    let resource_at = arn.match_indices(':').nth(4)?.0 + 1;
    if !arn[..resource_at].starts_with("arn:") || !arn[..resource_at].contains(":sts:") {
        return None;
    }
    let resource = arn[resource_at..].strip_prefix("assumed-role/")?;
    let session_slash = resource.find('/')?;
    Some(resource_at + "assumed-role/".len() + session_slash)
}

/// Parses an ISO 8601 UTC timestamp such as `2024-05-01T13:07:42Z` into
/// whole seconds since the epoch; fractional seconds are dropped.
pub fn parse_event_time(text: &str) -> Result<i64, BadMessage> {
    if let Some(seconds) = parse_cloudtrail_time(text.as_bytes()) {
        return Ok(seconds);
    }
    OffsetDateTime::parse(text, &Rfc3339)
        .map(|t| t.unix_timestamp())
        .map_err(|e| BadMessage {
            reason: RejectReason::BadEventTime,
            detail: format!("eventTime {:?} is not RFC 3339: {e}", truncate(text, 64)),
        })
}

/// The one shape CloudTrail writes, `2024-05-01T13:07:42Z`, without the
/// general RFC 3339 parser: at a million records a second its generality
/// is a large share of the parse. Anything else, valid or not, returns
/// `None` and goes to the general parser. A property test holds the two
/// to the same answers.
fn parse_cloudtrail_time(text: &[u8]) -> Option<i64> {
    let [y0, y1, y2, y3, b'-', m0, m1, b'-', d0, d1, b'T', h0, h1, b':', n0, n1, b':', s0, s1, b'Z'] =
        *text
    else {
        return None;
    };
    let number = |digits: &[u8]| {
        digits.iter().try_fold(0i64, |acc, &d| {
            d.is_ascii_digit().then(|| acc * 10 + i64::from(d - b'0'))
        })
    };
    let year = number(&[y0, y1, y2, y3])?;
    let month = number(&[m0, m1])?;
    let day = number(&[d0, d1])?;
    let (hour, minute, second) =
        (number(&[h0, h1])?, number(&[n0, n1])?, number(&[s0, s1])?);
    let month_days = match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        1..=12 => 31,
        _ => return None,
    };
    if !(1..=month_days).contains(&day) || hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + hour * 3_600 + minute * 60 + second)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (the well-known
/// era-based conversion: 400-year eras of 146,097 days).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_from_march = (month + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_era =
        year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

fn wrong_type(field: &str) -> BadMessage {
    BadMessage {
        reason: RejectReason::WrongType,
        detail: format!("{field} is not a string"),
    }
}

fn truncate(text: &str, max_chars: usize) -> &str {
    match text.char_indices().nth(max_chars) {
        Some((end, _)) => &text[..end],
        None => text,
    }
}

fn classify_json_error(body: &[u8], error: &serde_json::Error) -> BadMessage {
    // serde_json reports a non-object top level and a wrong field type as
    // the same "data" category; the message tells them apart.
    let text = error.to_string();
    let reason = if std::str::from_utf8(body).is_err() {
        RejectReason::InvalidUtf8
    } else if error.is_data() && text.starts_with("invalid type") {
        if text.contains("expected a CloudTrail") {
            RejectReason::NotAnObject
        } else {
            RejectReason::WrongType
        }
    } else {
        RejectReason::InvalidJson
    };
    BadMessage {
        reason,
        detail: text,
    }
}

/// The top level of a message: a record, or a log file body whose
/// `Records` are parsed one by one so that one bad record does not spoil
/// the rest.
struct TopLevel<'a> {
    records: Option<Vec<&'a RawValue>>,
    fields: RecordFields<'a>,
}

#[derive(Default)]
struct RecordFields<'a> {
    event_time: Field<'a>,
    event_type: Field<'a>,
    event_name: Field<'a>,
    event_id: Field<'a>,
    user_identity: Option<Identity<'a>>,
    source_ip: Field<'a>,
    user_agent: Field<'a>,
    region: Field<'a>,
    error_code: Field<'a>,
}

#[derive(Default)]
struct Identity<'a> {
    arn: Field<'a>,
    invoked_by: Field<'a>,
}

/// A string field as found: a wrong type is kept as a fact instead of
/// failing the parse, so the reason can name the field.
#[derive(Default, Debug)]
enum Field<'a> {
    #[default]
    Absent,
    Null,
    WrongType,
    Str(Cow<'a, str>),
}

impl<'a> Field<'a> {
    fn into_str(self, name: &str) -> Result<Option<Cow<'a, str>>, BadMessage> {
        match self {
            Field::Absent | Field::Null => Ok(None),
            Field::WrongType => Err(wrong_type(name)),
            Field::Str(text) => Ok(Some(text)),
        }
    }

    /// A field that only explains: a wrong type is dropped, not an error.
    fn into_context(self) -> Option<Cow<'a, str>> {
        match self {
            Field::Str(text) if !text.is_empty() => Some(text),
            _ => None,
        }
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Field<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(FieldVisitor)
    }
}

struct FieldVisitor;

impl<'de> Visitor<'de> for FieldVisitor {
    type Value = Field<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Field::Str(Cow::Borrowed(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Field::Str(Cow::Owned(v.to_owned())))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Field::Str(Cow::Owned(v)))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Field::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Field::Null)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Field::WrongType)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Field::WrongType)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Field::WrongType)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Field::WrongType)
    }

    fn visit_seq<A: de::SeqAccess<'de>>(
        self,
        mut seq: A,
    ) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Field::WrongType)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Field::WrongType)
    }
}

/// Keys of a record. Matched against the input in place: serde's own
/// `Cow<str>` impl always allocates, and a CloudTrail record has a few
/// dozen keys, so that allocation per key was the parser's largest cost.
#[derive(Clone, Copy)]
enum Key {
    Known(KnownKey),
    Other,
}

#[derive(Clone, Copy)]
enum KnownKey {
    Records,
    EventTime,
    EventType,
    EventName,
    EventId,
    UserIdentity,
    Arn,
    InvokedBy,
    SourceIp,
    UserAgent,
    Region,
    ErrorCode,
}

impl Key {
    fn of(key: &str) -> Key {
        match key {
            "Records" => Key::Known(KnownKey::Records),
            "eventTime" => Key::Known(KnownKey::EventTime),
            "eventType" => Key::Known(KnownKey::EventType),
            "eventName" => Key::Known(KnownKey::EventName),
            "eventID" => Key::Known(KnownKey::EventId),
            "userIdentity" => Key::Known(KnownKey::UserIdentity),
            "arn" => Key::Known(KnownKey::Arn),
            "invokedBy" => Key::Known(KnownKey::InvokedBy),
            "sourceIPAddress" => Key::Known(KnownKey::SourceIp),
            "userAgent" => Key::Known(KnownKey::UserAgent),
            "awsRegion" => Key::Known(KnownKey::Region),
            "errorCode" => Key::Known(KnownKey::ErrorCode),
            _ => Key::Other,
        }
    }
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(KeyVisitor)
    }
}

struct KeyVisitor;

impl<'de> Visitor<'de> for KeyVisitor {
    type Value = Key;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object key")
    }

    // serde_json hands over a key with escapes as a `&str` of its own
    // scratch buffer, so this one method covers borrowed and escaped keys.
    fn visit_str<E: de::Error>(self, key: &str) -> Result<Key, E> {
        Ok(Key::of(key))
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for TopLevel<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(TopLevelVisitor)
    }
}

struct TopLevelVisitor;

impl<'de> Visitor<'de> for TopLevelVisitor {
    type Value = TopLevel<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a CloudTrail record or log file object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut top = TopLevel {
            records: None,
            fields: RecordFields::default(),
        };
        while let Some(key) = map.next_key::<Key>()? {
            match key {
                Key::Known(KnownKey::Records) => {
                    top.records = Some(map.next_value::<RecordsArray<'de>>()?.0)
                }
                Key::Known(known) => read_record_field(&mut top.fields, known, &mut map)?,
                Key::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(top)
    }
}

/// `Records` must be an array; anything else makes the message unusable.
struct RecordsArray<'a>(Vec<&'a RawValue>);

impl<'de: 'a, 'a> Deserialize<'de> for RecordsArray<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Vec::<&'a RawValue>::deserialize(deserializer).map(RecordsArray)
    }
}

fn read_record_field<'de, A: MapAccess<'de>>(
    fields: &mut RecordFields<'de>,
    key: KnownKey,
    map: &mut A,
) -> Result<(), A::Error> {
    match key {
        KnownKey::EventTime => fields.event_time = map.next_value()?,
        KnownKey::EventType => fields.event_type = map.next_value()?,
        KnownKey::EventName => fields.event_name = map.next_value()?,
        KnownKey::EventId => fields.event_id = map.next_value()?,
        KnownKey::SourceIp => fields.source_ip = map.next_value()?,
        KnownKey::UserAgent => fields.user_agent = map.next_value()?,
        KnownKey::Region => fields.region = map.next_value()?,
        KnownKey::ErrorCode => fields.error_code = map.next_value()?,
        KnownKey::UserIdentity => {
            fields.user_identity =
                map.next_value::<Option<IdentityOrOther<'de>>>()?
                    .map(|identity| match identity {
                        IdentityOrOther::Identity(identity) => identity,
                        // A non-object userIdentity has no ARN to read.
                        IdentityOrOther::Other => Identity::default(),
                    })
        }
        _ => {
            map.next_value::<IgnoredAny>()?;
        }
    }
    Ok(())
}

impl<'de: 'a, 'a> Deserialize<'de> for RecordFields<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(RecordVisitor)
    }
}

struct RecordVisitor;

impl<'de> Visitor<'de> for RecordVisitor {
    type Value = RecordFields<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a CloudTrail record object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut fields = RecordFields::default();
        while let Some(key) = map.next_key::<Key>()? {
            match key {
                Key::Known(KnownKey::Records) | Key::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
                Key::Known(known) => read_record_field(&mut fields, known, &mut map)?,
            }
        }
        Ok(fields)
    }
}

enum IdentityOrOther<'a> {
    Identity(Identity<'a>),
    Other,
}

impl<'de: 'a, 'a> Deserialize<'de> for IdentityOrOther<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(IdentityVisitor)
    }
}

struct IdentityVisitor;

impl<'de> Visitor<'de> for IdentityVisitor {
    type Value = IdentityOrOther<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a userIdentity object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut identity = Identity::default();
        while let Some(key) = map.next_key::<Key>()? {
            match key {
                Key::Known(KnownKey::Arn) => identity.arn = map.next_value()?,
                Key::Known(KnownKey::InvokedBy) => {
                    identity.invoked_by = map.next_value()?
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(IdentityOrOther::Identity(identity))
    }

    fn visit_seq<A: de::SeqAccess<'de>>(
        self,
        mut seq: A,
    ) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(IdentityOrOther::Other)
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(IdentityOrOther::Other)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(IdentityOrOther::Other)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(IdentityOrOther::Other)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(IdentityOrOther::Other)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(IdentityOrOther::Other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collapsed(arn: &str) -> String {
        let mut arn = Cow::Borrowed(arn);
        collapse_session(&mut arn);
        arn.into_owned()
    }

    #[test]
    fn an_assumed_role_session_counts_as_its_role() {
        assert_eq!(
            collapsed("arn:aws:sts::123456789012:assumed-role/deploy/gh-run-4411"),
            "arn:aws:sts::123456789012:assumed-role/deploy"
        );
        assert_eq!(
            collapsed("arn:aws-us-gov:sts::123456789012:assumed-role/r/s/extra"),
            "arn:aws-us-gov:sts::123456789012:assumed-role/r"
        );
        for unchanged in [
            "arn:aws:iam::123456789012:user/alice",
            "arn:aws:iam::123456789012:role/assumed-role/x",
            "arn:aws:sts::123456789012:assumed-role/no-session",
            "arn:aws:sts::123456789012:federated-user/bob",
            "not an arn",
        ] {
            assert_eq!(collapsed(unchanged), unchanged);
        }
    }

    fn outcomes(message: &[u8]) -> Result<Vec<String>, BadMessage> {
        outcomes_with(message, &ParseOptions::default())
    }

    fn outcomes_with(
        message: &[u8],
        options: &ParseOptions,
    ) -> Result<Vec<String>, BadMessage> {
        let body = MessageBody::decode(message, options)?;
        let mut seen = Vec::new();
        body.for_each_record(options, |_, outcome| {
            seen.push(match outcome {
                RecordOutcome::Call(call) => {
                    format!("call {} {} {}", call.event_time, call.arn, call.event_name)
                }
                RecordOutcome::Skipped { reason, .. } => format!("skip {reason}"),
                RecordOutcome::Rejected { reason, .. } => format!("reject {reason}"),
            })
        })?;
        Ok(seen)
    }

    const RECORD: &str = r#"{"eventVersion":"1.08","userIdentity":{"type":"IAMUser",
        "arn":"arn:aws:iam::123456789012:user/alice","accountId":"123456789012"},
        "eventTime":"2024-05-01T13:07:42Z","eventSource":"s3.amazonaws.com",
        "eventName":"ListBuckets","requestParameters":{"a":[1,2,{"b":null}]},
        "eventType":"AwsApiCall","eventID":"e1"}"#;

    #[test]
    fn single_record_yields_its_call() {
        assert_eq!(
            outcomes(RECORD.as_bytes()).unwrap(),
            ["call 1714568862 arn:aws:iam::123456789012:user/alice ListBuckets"]
        );
    }

    #[test]
    fn log_file_body_yields_each_record_and_rejects_only_the_bad_one() {
        let body = format!(r#"{{"Records":[{RECORD},{{"eventTime":7}},{RECORD}]}}"#);
        assert_eq!(
            outcomes(body.as_bytes()).unwrap(),
            [
                "call 1714568862 arn:aws:iam::123456789012:user/alice ListBuckets",
                "reject wrong_type",
                "call 1714568862 arn:aws:iam::123456789012:user/alice ListBuckets",
            ]
        );
    }

    #[test]
    fn gzip_body_is_decompressed() {
        use std::io::Write;
        let mut encoder =
            flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(RECORD.as_bytes()).unwrap();
        let gz = encoder.finish().unwrap();
        assert_eq!(outcomes(&gz).unwrap().len(), 1);
    }

    #[test]
    fn gzip_bomb_is_rejected_as_too_large_without_inflating_it_all() {
        use std::io::Write;
        let mut encoder =
            flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        encoder.write_all(&vec![b' '; 8 * 1024 * 1024]).unwrap();
        let gz = encoder.finish().unwrap();
        assert_eq!(outcomes(&gz).unwrap_err().reason, RejectReason::TooLarge);
    }

    #[test]
    fn escaped_strings_are_unescaped() {
        let record = RECORD.replace("user/alice", r"user/al\u0069ce");
        assert_eq!(
            outcomes(record.as_bytes()).unwrap(),
            ["call 1714568862 arn:aws:iam::123456789012:user/alice ListBuckets"]
        );
    }

    #[test]
    fn skips_carry_their_reason() {
        let service = RECORD.replace(
            r#""arn":"arn:aws:iam::123456789012:user/alice","#,
            r#""invokedBy":"ec2.amazonaws.com","#,
        );
        assert_eq!(outcomes(service.as_bytes()).unwrap(), ["skip no_arn"]);
        let empty_arn = RECORD.replace("arn:aws:iam::123456789012:user/alice", "");
        assert_eq!(outcomes(empty_arn.as_bytes()).unwrap(), ["skip no_arn"]);
        let sign_in = RECORD.replace("AwsApiCall", "AwsConsoleSignIn");
        assert_eq!(outcomes(sign_in.as_bytes()).unwrap(), ["skip not_api_call"]);
        let invoked = RECORD.replace(
            r#""type":"IAMUser","#,
            r#""type":"IAMUser","invokedBy":"lambda.amazonaws.com","#,
        );
        let ignore = ParseOptions {
            ignore_service_principals: true,
            ..ParseOptions::default()
        };
        assert_eq!(
            outcomes_with(invoked.as_bytes(), &ignore).unwrap(),
            ["skip invoked_by_service"]
        );
        assert_eq!(outcomes(invoked.as_bytes()).unwrap().len(), 1);
    }

    #[test]
    fn bad_messages_carry_their_reason() {
        let reason = |bytes: &[u8]| outcomes(bytes).unwrap_err().reason;
        assert_eq!(reason(b"{not json"), RejectReason::InvalidJson);
        assert_eq!(reason(b""), RejectReason::InvalidJson);
        assert_eq!(reason(b"null"), RejectReason::NotAnObject);
        assert_eq!(reason(b"[1,2]"), RejectReason::NotAnObject);
        assert_eq!(reason(b"\"text\""), RejectReason::NotAnObject);
        assert_eq!(
            reason(b"{\"eventTime\":\"\xff\"}"),
            RejectReason::InvalidUtf8
        );
        assert_eq!(reason(b"{}"), RejectReason::MissingEventTime);
        assert_eq!(
            reason(br#"{"eventTime":"yesterday"}"#),
            RejectReason::BadEventTime
        );
        let numeric_arn =
            RECORD.replace(r#""arn:aws:iam::123456789012:user/alice""#, "123456789012");
        assert_eq!(reason(numeric_arn.as_bytes()), RejectReason::WrongType);
        let object_arn =
            RECORD.replace(r#""arn:aws:iam::123456789012:user/alice""#, r#"{"a":1}"#);
        assert_eq!(reason(object_arn.as_bytes()), RejectReason::WrongType);
        assert_eq!(reason(br#"{"Records":5}"#), RejectReason::WrongType);
        let deep = "[".repeat(100_000);
        let nested = format!(r#"{{"eventTime":"2024-05-01T13:07:42Z","x":{deep}}}"#);
        assert_eq!(reason(nested.as_bytes()), RejectReason::InvalidJson);
    }

    #[test]
    fn oversized_message_is_rejected() {
        let options = ParseOptions {
            max_message_bytes: 100,
            ..ParseOptions::default()
        };
        let error = outcomes_with(RECORD.as_bytes(), &options).unwrap_err();
        assert_eq!(error.reason, RejectReason::TooLarge);
        assert!(error.detail.contains("input.max_message_bytes"));
    }

    proptest::proptest! {
        #[test]
        fn fast_event_time_agrees_with_the_general_parser(
            unix in -62_135_596_800i64..253_402_300_799,
        ) {
            let time = OffsetDateTime::from_unix_timestamp(unix).unwrap();
            let text = time.format(&Rfc3339).unwrap();
            proptest::prop_assert_eq!(parse_cloudtrail_time(text.as_bytes()), Some(unix));
        }

        #[test]
        fn fast_event_time_never_accepts_what_the_general_parser_refuses(
            text in "[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z",
        ) {
            let general = OffsetDateTime::parse(&text, &Rfc3339).ok().map(|t| t.unix_timestamp());
            if let Some(fast) = parse_cloudtrail_time(text.as_bytes()) {
                proptest::prop_assert_eq!(Some(fast), general);
            }
        }
    }

    #[test]
    fn event_time_accepts_fractions_and_offsets() {
        assert_eq!(
            parse_event_time("2024-05-01T13:07:42Z").unwrap(),
            1714568862
        );
        assert_eq!(
            parse_event_time("2024-05-01T13:07:42.999Z").unwrap(),
            1714568862
        );
        assert_eq!(
            parse_event_time("2024-05-01T15:07:42+02:00").unwrap(),
            1714568862
        );
    }
}
