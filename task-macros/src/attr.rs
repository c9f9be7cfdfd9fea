//! Parsing the arguments of `#[task(...)]`.
//!
//! Keys are parsed strictly: an unknown key, a key given twice, a value of the
//! wrong kind or out of range, an empty name and a rate limit that is not
//! Celery's notation are errors. After an error in one key the parser skips
//! to the next comma, so that every bad key is reported at once.

use proc_macro2::{Span, TokenStream, TokenTree};
use quote::ToTokens;
use syn::ext::IdentExt;
use syn::parse::{ParseStream, Parser};
use syn::{
    Expr, ExprArray, ExprLit, ExprPath, ExprUnary, Ident, Lit, LitBool, LitStr, Path, Token, UnOp,
};

use crate::ctxt::Ctxt;

mod kw {
    syn::custom_keyword!(name);
    syn::custom_keyword!(queue);
    syn::custom_keyword!(track_started);
    syn::custom_keyword!(early_ack);
    syn::custom_keyword!(time_limit);
    syn::custom_keyword!(soft_time_limit);
    syn::custom_keyword!(max_retries);
    syn::custom_keyword!(default_retry_delay);
    syn::custom_keyword!(retry_backoff);
    syn::custom_keyword!(retry_backoff_max);
    syn::custom_keyword!(retry_jitter);
    syn::custom_keyword!(autoretry_for);
    syn::custom_keyword!(rate_limit);
}

/// The keys of `#[task(...)]`, each in the order of the docs.
const KEYS: &str = "`name`, `queue`, `track_started`, `early_ack`, `time_limit`, \
                    `soft_time_limit`, `max_retries`, `default_retry_delay`, `retry_backoff`, \
                    `retry_backoff_max`, `retry_jitter`, `autoretry_for`, `rate_limit` or `crate`";

/// The rate limit notations, quoted by the error about a bad one.
const RATE_LIMIT_FORMS: &str = "expected `\"<count>/s\"`, `\"<count>/m\"` or `\"<count>/h\"` \
                                with a count of at least 1, like `rate_limit = \"10/s\"` \
                                (a bare count, like `\"10\"`, is per second)";

/// What `#[task(...)]` declared. Keys with errors keep their default value.
#[derive(Default)]
pub(crate) struct TaskAttr {
    /// `name = "..."`: the registered name (default: the function's path).
    pub(crate) name: Option<LitStr>,
    /// `queue = "..."`: the default queue.
    pub(crate) queue: Option<LitStr>,
    /// `track_started` or `track_started = bool`.
    pub(crate) track_started: Option<LitBool>,
    /// `early_ack` or `early_ack = bool`.
    pub(crate) early_ack: Option<LitBool>,
    /// `time_limit = <seconds>`: more than 0.
    pub(crate) time_limit: Option<Seconds>,
    /// `soft_time_limit = <seconds>`: more than 0 and less than `time_limit`.
    pub(crate) soft_time_limit: Option<Seconds>,
    /// `max_retries = <u32>` or `max_retries = None` (`Some(None)`: unlimited).
    pub(crate) max_retries: Option<Option<u32>>,
    /// `default_retry_delay = <seconds>`: 0 or more.
    pub(crate) default_retry_delay: Option<Seconds>,
    /// `retry_backoff = <seconds>` (more than 0), `retry_backoff = bool` or
    /// `retry_backoff`: the factor in milliseconds (`Some(None)`: no backoff).
    pub(crate) retry_backoff: Option<Option<u64>>,
    /// `retry_backoff_max = <seconds>`: more than 0.
    pub(crate) retry_backoff_max: Option<Seconds>,
    /// `retry_jitter` or `retry_jitter = bool`.
    pub(crate) retry_jitter: Option<LitBool>,
    /// `autoretry_for = [...]`: at least one error type.
    pub(crate) autoretry_for: Option<AutoretryFor>,
    /// `rate_limit = "..."`, in Celery's notation.
    pub(crate) rate_limit: Option<RateLimit>,
    /// `crate = "..."`: the path of `task_core` (default `::task_core`).
    pub(crate) krate: Option<Path>,
}

/// A duration given in seconds, as an integer or float literal.
pub(crate) struct Seconds {
    /// The duration, exactly: values finer than a millisecond are rejected.
    pub(crate) millis: u64,
    /// The literal as written, for errors about it.
    value: Expr,
}

/// The error types of `autoretry_for = [...]`.
#[derive(Default)]
pub(crate) struct AutoretryFor {
    /// The entries given as strings: exception names, as
    /// `TaskError::exc_type` reports them, in order and without duplicates.
    pub(crate) names: Vec<String>,
    /// The entries given as paths: error types, matched by type identity, in
    /// order and without duplicates (as written).
    pub(crate) paths: Vec<Path>,
}

/// `rate_limit = "..."`: `count` runs per `period_secs` seconds.
pub(crate) struct RateLimit {
    /// At least 1.
    pub(crate) count: u32,
    /// 1, 60 or 3600.
    pub(crate) period_secs: u64,
}

/// The values a number of seconds may take.
#[derive(Clone, Copy)]
enum Range {
    /// More than 0.
    Positive,
    /// 0 or more.
    NonNegative,
}

impl TaskAttr {
    /// Parses the tokens inside `#[task(...)]`, recording every error in `cx`.
    pub(crate) fn parse(cx: &Ctxt, tokens: TokenStream) -> Self {
        let mut attr = Self::default();
        let parser = |input: ParseStream<'_>| attr.parse_keys(cx, input);
        if let Err(error) = parser.parse2(tokens) {
            cx.syn_error(error);
        }
        if let (Some(hard), Some(soft)) = (&attr.time_limit, &attr.soft_time_limit) {
            if soft.millis >= hard.millis {
                cx.error_spanned_by(
                    &soft.value,
                    format!(
                        "`soft_time_limit = {}` must be less than `time_limit = {}`: the soft \
                         limit warns the task before the hard limit cancels it",
                        soft.value.to_token_stream(),
                        hard.value.to_token_stream(),
                    ),
                );
            }
        }
        attr
    }

    /// `key = value, ...`, with an optional trailing comma.
    fn parse_keys(&mut self, cx: &Ctxt, input: ParseStream<'_>) -> syn::Result<()> {
        while !input.is_empty() {
            if let Err(error) = self.parse_key(cx, input) {
                cx.syn_error(error);
                skip_to_comma(input)?;
            }
            if input.is_empty() {
                break;
            }
            input.parse::<Token![,]>()?;
        }
        Ok(())
    }

    /// One `key = value`. Errors about the value itself are recorded in `cx`
    /// (parsing goes on); a syntax error is returned.
    fn parse_key(&mut self, cx: &Ctxt, input: ParseStream<'_>) -> syn::Result<()> {
        let lookahead = input.lookahead1();
        if lookahead.peek(kw::name) {
            let key: kw::name = input.parse()?;
            let value = parse_str(input, "name", "name = \"tasks.add\"")?;
            if value.value().is_empty() {
                cx.error_spanned_by(&value, "the task name must not be empty");
            }
            set_once(cx, &mut self.name, key, value, "name");
        } else if lookahead.peek(kw::queue) {
            let key: kw::queue = input.parse()?;
            let value = parse_str(input, "queue", "queue = \"emails\"")?;
            if value.value().is_empty() {
                cx.error_spanned_by(&value, "the queue name must not be empty");
            }
            set_once(cx, &mut self.queue, key, value, "queue");
        } else if lookahead.peek(kw::track_started) {
            let key: kw::track_started = input.parse()?;
            let value = parse_flag(input, key.span, "track_started")?;
            set_once(cx, &mut self.track_started, key, value, "track_started");
        } else if lookahead.peek(kw::early_ack) {
            let key: kw::early_ack = input.parse()?;
            let value = parse_flag(input, key.span, "early_ack")?;
            set_once(cx, &mut self.early_ack, key, value, "early_ack");
        } else if lookahead.peek(kw::time_limit) {
            let key: kw::time_limit = input.parse()?;
            let value = parse_seconds(input, "time_limit", Range::Positive)?;
            set_once(cx, &mut self.time_limit, key, value, "time_limit");
        } else if lookahead.peek(kw::soft_time_limit) {
            let key: kw::soft_time_limit = input.parse()?;
            let value = parse_seconds(input, "soft_time_limit", Range::Positive)?;
            set_once(cx, &mut self.soft_time_limit, key, value, "soft_time_limit");
        } else if lookahead.peek(kw::max_retries) {
            let key: kw::max_retries = input.parse()?;
            let value = parse_max_retries(input)?;
            set_once(cx, &mut self.max_retries, key, value, "max_retries");
        } else if lookahead.peek(kw::default_retry_delay) {
            let key: kw::default_retry_delay = input.parse()?;
            let value = parse_seconds(input, "default_retry_delay", Range::NonNegative)?;
            set_once(
                cx,
                &mut self.default_retry_delay,
                key,
                value,
                "default_retry_delay",
            );
        } else if lookahead.peek(kw::retry_backoff) {
            let key: kw::retry_backoff = input.parse()?;
            let value = parse_backoff(input)?;
            set_once(cx, &mut self.retry_backoff, key, value, "retry_backoff");
        } else if lookahead.peek(kw::retry_backoff_max) {
            let key: kw::retry_backoff_max = input.parse()?;
            let value = parse_seconds(input, "retry_backoff_max", Range::Positive)?;
            set_once(
                cx,
                &mut self.retry_backoff_max,
                key,
                value,
                "retry_backoff_max",
            );
        } else if lookahead.peek(kw::retry_jitter) {
            let key: kw::retry_jitter = input.parse()?;
            let value = parse_flag(input, key.span, "retry_jitter")?;
            set_once(cx, &mut self.retry_jitter, key, value, "retry_jitter");
        } else if lookahead.peek(kw::autoretry_for) {
            let key: kw::autoretry_for = input.parse()?;
            let value = parse_autoretry_for(cx, input)?;
            set_once(cx, &mut self.autoretry_for, key, value, "autoretry_for");
        } else if lookahead.peek(kw::rate_limit) {
            let key: kw::rate_limit = input.parse()?;
            let value = parse_str(input, "rate_limit", "rate_limit = \"10/s\"")?;
            let rate = parse_rate_limit(&value.value()).ok_or_else(|| {
                syn::Error::new(
                    value.span(),
                    format!(
                        "invalid rate limit {}: {RATE_LIMIT_FORMS}",
                        value.to_token_stream()
                    ),
                )
            })?;
            set_once(cx, &mut self.rate_limit, key, rate, "rate_limit");
        } else if lookahead.peek(Token![crate]) {
            let key: Token![crate] = input.parse()?;
            let value = parse_str(input, "crate", "crate = \"my_app::task_core\"")?;
            let path = value.parse_with(Path::parse_mod_style).map_err(|_| {
                syn::Error::new(
                    value.span(),
                    "`crate` must be the path of `task_core`, like `crate = \"my_app::task_core\"`",
                )
            })?;
            set_once(cx, &mut self.krate, key, path, "crate");
        } else if input.peek(Ident::peek_any) {
            let key = input.call(Ident::parse_any)?;
            return Err(syn::Error::new(
                key.span(),
                format!("unknown `#[task]` key `{key}`; expected {KEYS}"),
            ));
        } else {
            return Err(lookahead.error());
        }
        Ok(())
    }
}

/// Stores `value` unless the key was already set, which is an error pointing
/// at the second occurrence.
fn set_once<T>(cx: &Ctxt, slot: &mut Option<T>, key: impl quote::ToTokens, value: T, name: &str) {
    if slot.is_some() {
        cx.error_spanned_by(key, format!("`{name}` set multiple times"));
    } else {
        *slot = Some(value);
    }
}

/// `= "string"`; anything else after `=` is an error pointing at it.
fn parse_str(input: ParseStream<'_>, key: &str, example: &str) -> syn::Result<LitStr> {
    input.parse::<Token![=]>()?;
    match input.parse::<Expr>()? {
        Expr::Lit(ExprLit {
            lit: Lit::Str(value),
            ..
        }) => Ok(value),
        other => Err(syn::Error::new_spanned(
            other,
            format!("`{key}` must be a string literal, like `{example}`"),
        )),
    }
}

/// `= true`, `= false`, or nothing, which means `true`.
fn parse_flag(input: ParseStream<'_>, key_span: Span, key: &str) -> syn::Result<LitBool> {
    if input.peek(Token![=]) {
        input.parse::<Token![=]>()?;
        parse_bool(input, key)
    } else {
        Ok(LitBool::new(true, key_span))
    }
}

/// `true` or `false`, after the `=`.
fn parse_bool(input: ParseStream<'_>, key: &str) -> syn::Result<LitBool> {
    match input.parse::<Expr>()? {
        Expr::Lit(ExprLit {
            lit: Lit::Bool(value),
            ..
        }) => Ok(value),
        other => Err(syn::Error::new_spanned(
            other,
            format!("`{key}` must be `true` or `false`"),
        )),
    }
}

/// `= <seconds>`: an unsuffixed integer or float literal in `range`.
fn parse_seconds(input: ParseStream<'_>, key: &str, range: Range) -> syn::Result<Seconds> {
    input.parse::<Token![=]>()?;
    let value = input.parse::<Expr>()?;
    seconds(
        value,
        key,
        &format!("`{key}` must be a number of seconds, like `{key} = 30` or `{key} = 2.5`"),
        range,
    )
}

/// `value` as a number of seconds in `range`; `expected` is the error for a
/// value that is not a number.
fn seconds(value: Expr, key: &str, expected: &str, range: Range) -> syn::Result<Seconds> {
    let out_of_range = match range {
        Range::Positive => format!("`{key}` must be greater than 0"),
        Range::NonNegative => format!("`{key}` must not be negative"),
    };
    let (digits, suffix) = match &value {
        Expr::Lit(ExprLit {
            lit: Lit::Int(int), ..
        }) => (int.base10_digits(), int.suffix()),
        Expr::Lit(ExprLit {
            lit: Lit::Float(float),
            ..
        }) => (float.base10_digits(), float.suffix()),
        Expr::Unary(ExprUnary {
            op: UnOp::Neg(_),
            expr,
            ..
        }) if is_number(expr) => return Err(syn::Error::new_spanned(value, out_of_range)),
        _ => return Err(syn::Error::new_spanned(value, expected)),
    };
    if !suffix.is_empty() {
        return Err(unexpected_suffix(&value, key, suffix));
    }
    let millis = match decimal_millis(digits) {
        Ok(millis) => millis,
        Err(Inexact::FinerThanMillis) => {
            return Err(syn::Error::new_spanned(
                value,
                format!("`{key}` must be a whole number of milliseconds (at most 3 decimals)"),
            ))
        }
        Err(Inexact::TooLarge) => {
            return Err(syn::Error::new_spanned(
                value,
                format!("`{key}` is too large"),
            ))
        }
    };
    if millis == 0 && matches!(range, Range::Positive) {
        return Err(syn::Error::new_spanned(value, out_of_range));
    }
    Ok(Seconds { millis, value })
}

/// An integer or float literal.
fn is_number(expr: &Expr) -> bool {
    matches!(
        expr,
        Expr::Lit(ExprLit {
            lit: Lit::Int(_) | Lit::Float(_),
            ..
        })
    )
}

/// The error for `30u64` where a plain number is expected.
fn unexpected_suffix(value: &Expr, key: &str, suffix: &str) -> syn::Error {
    syn::Error::new_spanned(
        value,
        format!("`{key}` takes a number without a type suffix: remove `{suffix}`"),
    )
}

/// Why a number of seconds is not a whole number of milliseconds in a `u64`.
#[derive(Debug, PartialEq)]
enum Inexact {
    FinerThanMillis,
    TooLarge,
}

/// The decimal number `digits` (`base10_digits` of an integer or float
/// literal: `30`, `2.5`, `1e3`, `1.5E-2`) times 1000, computed exactly.
fn decimal_millis(digits: &str) -> Result<u64, Inexact> {
    let (mantissa, exponent) = match digits.find(['e', 'E']) {
        Some(at) => {
            let exponent = digits[at + 1..].parse::<i64>();
            (&digits[..at], exponent.map_err(|_| Inexact::TooLarge)?)
        }
        None => (digits, 0),
    };
    let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    // The value in milliseconds is `significand × 10^scale`.
    let significand = format!("{whole}{fraction}");
    let significand = significand.trim_start_matches('0');
    let scale = exponent
        .saturating_add(3)
        .saturating_sub(fraction.len() as i64);
    let (kept, dropped) = if scale >= 0 {
        (significand, "")
    } else {
        let kept = significand
            .len()
            .saturating_sub(scale.unsigned_abs() as usize);
        significand.split_at(kept)
    };
    if dropped.bytes().any(|digit| digit != b'0') {
        return Err(Inexact::FinerThanMillis);
    }
    if kept.is_empty() {
        return Ok(0);
    }
    let kept: u64 = kept.parse().map_err(|_| Inexact::TooLarge)?;
    let scale = u32::try_from(scale.max(0)).map_err(|_| Inexact::TooLarge)?;
    10u64
        .checked_pow(scale)
        .and_then(|power| kept.checked_mul(power))
        .ok_or(Inexact::TooLarge)
}

/// `= <u32>` or `= None` (`None`: no limit).
fn parse_max_retries(input: ParseStream<'_>) -> syn::Result<Option<u32>> {
    input.parse::<Token![=]>()?;
    let value = input.parse::<Expr>()?;
    match &value {
        Expr::Path(ExprPath {
            qself: None, path, ..
        }) if path.is_ident("None") => Ok(None),
        Expr::Lit(ExprLit {
            lit: Lit::Int(int), ..
        }) => {
            if !int.suffix().is_empty() {
                return Err(unexpected_suffix(&value, "max_retries", int.suffix()));
            }
            int.base10_parse::<u32>().map(Some).map_err(|_| {
                syn::Error::new_spanned(
                    &value,
                    format!(
                        "`max_retries` must be at most {}; use `max_retries = None` for no limit",
                        u32::MAX
                    ),
                )
            })
        }
        Expr::Unary(ExprUnary {
            op: UnOp::Neg(_),
            expr,
            ..
        }) if is_number(expr) => Err(syn::Error::new_spanned(
            value,
            "`max_retries` must not be negative; use `max_retries = None` for no limit",
        )),
        _ => Err(syn::Error::new_spanned(
            value,
            "`max_retries` must be an integer, like `max_retries = 5`, or `None` for no limit",
        )),
    }
}

/// `= <seconds>` (more than 0), `= true` (1 second), `= false` (no backoff)
/// or nothing (1 second): the factor in milliseconds.
fn parse_backoff(input: ParseStream<'_>) -> syn::Result<Option<u64>> {
    const ONE_SECOND: u64 = 1000;
    if !input.peek(Token![=]) {
        return Ok(Some(ONE_SECOND));
    }
    input.parse::<Token![=]>()?;
    match input.parse::<Expr>()? {
        Expr::Lit(ExprLit {
            lit: Lit::Bool(flag),
            ..
        }) => Ok(flag.value.then_some(ONE_SECOND)),
        value => {
            let expected = "`retry_backoff` must be the first retry's delay in seconds, like \
                            `retry_backoff = 2`, or `true` (1 second) or `false` (no backoff)";
            let factor = seconds(value, "retry_backoff", expected, Range::Positive)?;
            Ok(Some(factor.millis))
        }
    }
}

/// `= [...]`: error type names as string literals or type paths, at least one.
/// Errors in entries are recorded in `cx`, and the other entries kept.
fn parse_autoretry_for(cx: &Ctxt, input: ParseStream<'_>) -> syn::Result<AutoretryFor> {
    input.parse::<Token![=]>()?;
    let array = match input.parse::<Expr>()? {
        Expr::Array(array) => array,
        other => {
            return Err(syn::Error::new_spanned(
                other,
                "`autoretry_for` must be a list of error types, like \
                 `autoretry_for = [\"IoError\", \"TimeoutError\"]` or \
                 `autoretry_for = [std::io::Error]`",
            ))
        }
    };
    let ExprArray { elems, .. } = &array;
    if elems.is_empty() {
        return Err(syn::Error::new_spanned(
            &array,
            "`autoretry_for` must name at least one error type; without the key, only errors \
             made with `TaskError::retry` are retried",
        ));
    }
    let mut autoretry_for = AutoretryFor::default();
    for entry in elems {
        match entry {
            Expr::Lit(ExprLit {
                lit: Lit::Str(name),
                ..
            }) => {
                let name = name.value();
                if name.is_empty() {
                    cx.error_spanned_by(entry, "an error type name must not be empty");
                    continue;
                }
                if name.contains("::") {
                    cx.error_spanned_by(
                        entry,
                        "a string entry is an exception name, as `TaskError::exc_type` \
                         reports it, without a path: write the type's path without quotes to \
                         match the Rust type",
                    );
                    continue;
                }
                if autoretry_for.names.contains(&name) {
                    cx.error_spanned_by(
                        entry,
                        format!("`\"{name}\"` is already in `autoretry_for`"),
                    );
                    continue;
                }
                autoretry_for.names.push(name);
            }
            Expr::Path(ExprPath {
                attrs,
                qself: None,
                path,
            }) if attrs.is_empty() => {
                let written = path_text(path);
                if autoretry_for
                    .paths
                    .iter()
                    .any(|seen| path_text(seen) == written)
                {
                    cx.error_spanned_by(
                        entry,
                        format!("`{written}` is already in `autoretry_for`"),
                    );
                    continue;
                }
                autoretry_for.paths.push(path.clone());
            }
            _ => {
                cx.error_spanned_by(
                    entry,
                    "an `autoretry_for` entry must be an error type's name as a string \
                     literal, like `\"IoError\"`, or a path to the type, like `std::io::Error`",
                );
            }
        }
    }
    Ok(autoretry_for)
}

/// A path as written, without spaces: `std::io::Error`.
fn path_text(path: &Path) -> String {
    path.to_token_stream().to_string().replace(' ', "")
}

/// Celery's rate notation, parsed like `task_core::RateLimit`'s `FromStr`:
/// `"10/s"`, `"100/m"`, `"1000/h"`, or a bare count, per second.
fn parse_rate_limit(text: &str) -> Option<RateLimit> {
    let (count, unit) = text.trim().split_once('/').unwrap_or((text.trim(), "s"));
    let count: u32 = count.trim().parse().ok()?;
    let period_secs = match unit.trim() {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => return None,
    };
    (count >= 1).then_some(RateLimit { count, period_secs })
}

/// Skips the rest of a bad key, up to (not including) the next top-level comma.
fn skip_to_comma(input: ParseStream<'_>) -> syn::Result<()> {
    while !input.is_empty() && !input.peek(Token![,]) {
        input.parse::<TokenTree>()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_convert_exactly_to_milliseconds() {
        assert_eq!(decimal_millis("30"), Ok(30_000));
        assert_eq!(decimal_millis("0"), Ok(0));
        assert_eq!(decimal_millis("0.0"), Ok(0));
        assert_eq!(decimal_millis("2.5"), Ok(2_500));
        assert_eq!(decimal_millis("1.005"), Ok(1_005));
        assert_eq!(decimal_millis("0.001"), Ok(1));
        assert_eq!(decimal_millis("1.500000"), Ok(1_500));
        assert_eq!(decimal_millis("1e3"), Ok(1_000_000));
        assert_eq!(decimal_millis("1.5E-2"), Ok(15));
        assert_eq!(decimal_millis("15e-3"), Ok(15));
        assert_eq!(decimal_millis("1500e-6"), Err(Inexact::FinerThanMillis));
        assert_eq!(decimal_millis("0.0005"), Err(Inexact::FinerThanMillis));
        assert_eq!(decimal_millis("1e-4"), Err(Inexact::FinerThanMillis));
        assert_eq!(decimal_millis("18446744073709551.615"), Ok(u64::MAX));
        assert_eq!(
            decimal_millis("18446744073709551.616"),
            Err(Inexact::TooLarge)
        );
        assert_eq!(decimal_millis("1e30"), Err(Inexact::TooLarge));
        assert_eq!(
            decimal_millis("1e99999999999999999999"),
            Err(Inexact::TooLarge)
        );
    }

    #[test]
    fn rate_limits_parse_like_task_core() {
        let parse = |text| parse_rate_limit(text).map(|rate| (rate.count, rate.period_secs));
        assert_eq!(parse("10/s"), Some((10, 1)));
        assert_eq!(parse("100/m"), Some((100, 60)));
        assert_eq!(parse("1000/h"), Some((1000, 3600)));
        assert_eq!(parse(" 5 "), Some((5, 1)));
        for bad in ["", "0/s", "x/s", "10/d", "-1/s", "10/", "4294967296/s"] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }
}
