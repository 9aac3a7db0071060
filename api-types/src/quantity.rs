//! Kubernetes resource quantities (`500m`, `256Mi`, `1e3`) held exactly in nano-units, and `IntOrString`.
//!
//! A [`Quantity`] is parsed with integer arithmetic only, stored as an `i128` count of
//! nano-units (so `1` is `1_000_000_000`), remembers the notation it was written in, and prints
//! in Kubernetes' canonical form. Amounts finer than `1n` round up (away from zero), as in
//! Kubernetes; amounts that do not fit are an error, never a silent cap.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::str::FromStr;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Nano-units in one unit.
const NANOS_PER_UNIT: i128 = 1_000_000_000;

/// The regular expression Kubernetes names when a quantity is malformed.
pub const QUANTITY_FORMAT: &str = "^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$";

/// The pattern a quantity string satisfies, as used in the JSON schema.
pub const QUANTITY_PATTERN: &str =
    r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)(([KMGTPE]i)|[numkMGTPE]|([eE][+-]?[0-9]+))?$";

/// How a quantity is written, which decides how it is printed back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Format {
    /// Decimal SI suffixes: `n`, `u`, `m`, none, `k`, `M`, `G`, `T`, `P`, `E`.
    #[default]
    DecimalSi,
    /// Binary SI suffixes: `Ki`, `Mi`, `Gi`, `Ti`, `Pi`, `Ei`.
    BinarySi,
    /// A decimal exponent: `1e3`, `5E-3`.
    DecimalExponent,
}

/// Why a string is not a quantity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    /// The text does not have the shape of a quantity.
    #[error(
        "invalid quantity {input:?}: quantities must match the regular expression '{QUANTITY_FORMAT}'"
    )]
    Format {
        /// The rejected text.
        input: String,
    },
    /// The number is fine but the suffix is not one Kubernetes knows.
    #[error(
        "invalid quantity {input:?}: unable to parse quantity's suffix {suffix:?} (known suffixes: n, u, m, k, M, G, T, P, E, Ki, Mi, Gi, Ti, Pi, Ei, or an exponent such as e3)"
    )]
    Suffix {
        /// The rejected text.
        input: String,
        /// The suffix that was not understood.
        suffix: String,
    },
    /// The amount is too large to hold exactly.
    #[error(
        "invalid quantity {input:?}: out of range: quantities must lie within ±170141183460469231731687303715.884105727 (128 bits of nano-units)"
    )]
    Overflow {
        /// The rejected text.
        input: String,
    },
}

/// A Kubernetes quantity: an exact amount in nano-units and the notation it prints in.
///
/// Equality, ordering and hashing look at the amount only: `1000m == 1`, `1Gi == 1024Mi`,
/// `1Gi > 1G`.
#[derive(Clone, Copy, Default)]
pub struct Quantity {
    nanos: i128,
    format: Format,
}

impl Quantity {
    /// Zero, written `0`.
    pub const ZERO: Quantity = Quantity {
        nanos: 0,
        format: Format::DecimalSi,
    };

    /// Parses Kubernetes notation (`500m`, `2`, `0.5`, `256Mi`, `1e3`, `+1`, `-1`).
    pub fn parse(input: &str) -> Result<Quantity, QuantityError> {
        parse_quantity(input)
    }

    /// A quantity of `nanos` nano-units written in `format`.
    ///
    /// A binary-SI quantity smaller than 1024 in magnitude is recorded as decimal SI, as
    /// Kubernetes does.
    pub fn from_nano_value(nanos: i128, format: Format) -> Quantity {
        let format = if format == Format::BinarySi && nanos.unsigned_abs() < 1024 * 1_000_000_000 {
            Format::DecimalSi
        } else {
            format
        };
        Quantity { nanos, format }
    }

    /// A quantity of `milli` thousandths (decimal SI): `from_milli_value(500)` is `500m`.
    pub fn from_milli_value(milli: i64) -> Quantity {
        Quantity::from_nano_value(i128::from(milli) * 1_000_000, Format::DecimalSi)
    }

    /// A quantity of `value` whole units written in `format`: `from_value(2 << 30, BinarySi)` is `2Gi`.
    pub fn from_value(value: i64, format: Format) -> Quantity {
        Quantity::from_nano_value(i128::from(value) * NANOS_PER_UNIT, format)
    }

    /// The exact amount in nano-units.
    pub fn nano_value(&self) -> i128 {
        self.nanos
    }

    /// The amount in thousandths, rounded away from zero (`1n` is `1`).
    pub fn milli_value(&self) -> i128 {
        div_away_from_zero(self.nanos, 1_000_000)
    }

    /// The amount in whole units, rounded away from zero (`1500m` is `2`).
    pub fn value(&self) -> i128 {
        div_away_from_zero(self.nanos, NANOS_PER_UNIT)
    }

    /// The notation the quantity prints in.
    pub fn format(&self) -> Format {
        self.format
    }

    /// Whether the amount is zero.
    pub fn is_zero(&self) -> bool {
        self.nanos == 0
    }

    /// Whether the amount is below zero.
    pub fn is_negative(&self) -> bool {
        self.nanos < 0
    }

    /// The sum, or `None` when it does not fit. The result keeps `self`'s notation, or
    /// `other`'s when `self` is zero (as Kubernetes' `Add`).
    pub fn checked_add(&self, other: &Quantity) -> Option<Quantity> {
        let nanos = self.nanos.checked_add(other.nanos)?;
        Some(Quantity::from_nano_value(nanos, self.result_format(other)))
    }

    /// The difference, or `None` when it does not fit. Notation as [`Quantity::checked_add`].
    pub fn checked_sub(&self, other: &Quantity) -> Option<Quantity> {
        let nanos = self.nanos.checked_sub(other.nanos)?;
        Some(Quantity::from_nano_value(nanos, self.result_format(other)))
    }

    fn result_format(&self, other: &Quantity) -> Format {
        if self.is_zero() {
            other.format
        } else {
            self.format
        }
    }

    /// The canonical Kubernetes string (`1Gi`, `500m`, `1e3`); the same as `to_string()`.
    pub fn to_canonical_string(&self) -> String {
        self.to_string()
    }
}

fn div_away_from_zero(n: i128, d: i128) -> i128 {
    let q = n / d;
    let r = n % d;
    if r > 0 {
        q + 1
    } else if r < 0 {
        q - 1
    } else {
        q
    }
}

impl PartialEq for Quantity {
    fn eq(&self, other: &Self) -> bool {
        self.nanos == other.nanos
    }
}

impl Eq for Quantity {}

impl PartialOrd for Quantity {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Quantity {
    fn cmp(&self, other: &Self) -> Ordering {
        self.nanos.cmp(&other.nanos)
    }
}

impl Hash for Quantity {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.nanos.hash(state);
    }
}

impl fmt::Debug for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Quantity({self})")
    }
}

impl FromStr for Quantity {
    type Err = QuantityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Quantity::parse(s)
    }
}

// ---- parsing ----

enum Suffix {
    Decimal(i64),
    Binary(u32),
    Exponent(i64),
}

/// Exponents beyond this are out of range for any non-zero mantissa; clamping keeps the
/// arithmetic below in `i64` without changing any outcome.
const EXPONENT_CLAMP: i64 = 1 << 40;

fn parse_suffix(suffix: &str) -> Option<Suffix> {
    let s = match suffix {
        "" => Suffix::Decimal(0),
        "n" => Suffix::Decimal(-9),
        "u" => Suffix::Decimal(-6),
        "m" => Suffix::Decimal(-3),
        "k" => Suffix::Decimal(3),
        "M" => Suffix::Decimal(6),
        "G" => Suffix::Decimal(9),
        "T" => Suffix::Decimal(12),
        "P" => Suffix::Decimal(15),
        "E" => Suffix::Decimal(18),
        "Ki" => Suffix::Binary(1),
        "Mi" => Suffix::Binary(2),
        "Gi" => Suffix::Binary(3),
        "Ti" => Suffix::Binary(4),
        "Pi" => Suffix::Binary(5),
        "Ei" => Suffix::Binary(6),
        _ => {
            let rest = suffix.strip_prefix(['e', 'E'])?;
            let (negative, digits) = match rest.as_bytes().first() {
                Some(b'-') => (true, &rest[1..]),
                Some(b'+') => (false, &rest[1..]),
                _ => (false, rest),
            };
            if digits.is_empty() || !digits.bytes().all(|c| c.is_ascii_digit()) {
                return None;
            }
            let mut magnitude: i64 = 0;
            for c in digits.bytes() {
                magnitude = magnitude
                    .saturating_mul(10)
                    .saturating_add(i64::from(c - b'0'))
                    .min(EXPONENT_CLAMP);
            }
            Suffix::Exponent(if negative { -magnitude } else { magnitude })
        }
    };
    Some(s)
}

fn parse_quantity(input: &str) -> Result<Quantity, QuantityError> {
    let format_err = || QuantityError::Format {
        input: input.to_string(),
    };
    let bytes = input.as_bytes();
    let mut pos = 0;
    let negative = match bytes.first() {
        Some(b'-') => {
            pos = 1;
            true
        }
        Some(b'+') => {
            pos = 1;
            false
        }
        Some(_) => false,
        None => return Err(format_err()),
    };
    let whole_start = pos;
    while pos < bytes.len() && bytes[pos].is_ascii_digit() {
        pos += 1;
    }
    let whole = &input[whole_start..pos];
    let mut frac = "";
    if pos < bytes.len() && bytes[pos] == b'.' {
        pos += 1;
        let frac_start = pos;
        while pos < bytes.len() && bytes[pos].is_ascii_digit() {
            pos += 1;
        }
        frac = &input[frac_start..pos];
    }
    if whole.is_empty() && frac.is_empty() {
        return Err(format_err());
    }
    let suffix = &input[pos..];
    // The suffix must have the shape `[eEinumkKMGTP]*[-+]?[0-9]*` to be a format problem
    // rather than an unknown suffix, as in Kubernetes.
    let letters_end = suffix
        .bytes()
        .position(|c| !b"eEinumkKMGTP".contains(&c))
        .unwrap_or(suffix.len());
    let mut rest = &suffix[letters_end..];
    if let Some(r) = rest.strip_prefix(['+', '-']) {
        rest = r;
    }
    if !rest.bytes().all(|c| c.is_ascii_digit()) {
        return Err(format_err());
    }
    let parsed_suffix = parse_suffix(suffix).ok_or_else(|| QuantityError::Suffix {
        input: input.to_string(),
        suffix: suffix.to_string(),
    })?;

    let (dec_exp, bin_k, format) = match parsed_suffix {
        Suffix::Decimal(e) => (e, 0, Format::DecimalSi),
        Suffix::Binary(k) => (0, k, Format::BinarySi),
        Suffix::Exponent(e) => (e, 0, Format::DecimalExponent),
    };

    // Significant digits, most significant first, with the count of digits after the point.
    let mut digits: Vec<u8> = whole
        .bytes()
        .chain(frac.bytes())
        .map(|c| c - b'0')
        .skip_while(|&d| d == 0)
        .collect();
    let mut frac_len = frac.len() as i64;
    while digits.last() == Some(&0) {
        digits.pop();
        frac_len -= 1;
    }
    if digits.is_empty() {
        return Ok(Quantity::from_nano_value(0, format));
    }
    for _ in 0..bin_k {
        multiply_digits(&mut digits, 1024);
    }
    // value in nano-units = digits * 10^scale
    let scale = 9 + dec_exp - frac_len;
    let overflow = || QuantityError::Overflow {
        input: input.to_string(),
    };
    let len = digits.len() as i64;
    let magnitude: u128 = if scale >= 0 {
        if len + scale > 39 {
            return Err(overflow());
        }
        let mut m = digits_to_u128(&digits).ok_or_else(overflow)?;
        for _ in 0..scale {
            m = m.checked_mul(10).ok_or_else(overflow)?;
        }
        m
    } else {
        let drop = -scale;
        if drop >= len {
            // Below one nano-unit: round up to the smallest amount.
            1
        } else {
            let keep = (len - drop) as usize;
            if keep > 39 {
                return Err(overflow());
            }
            let int_part = digits_to_u128(&digits[..keep]).ok_or_else(overflow)?;
            if digits[keep..].iter().any(|&d| d != 0) {
                int_part.checked_add(1).ok_or_else(overflow)?
            } else {
                int_part
            }
        }
    };
    let nanos = if negative {
        0i128.checked_sub_unsigned(magnitude)
    } else {
        i128::try_from(magnitude).ok()
    }
    .ok_or_else(overflow)?;
    Ok(Quantity::from_nano_value(nanos, format))
}

/// Multiplies a big-endian decimal digit vector by a small factor, exactly.
fn multiply_digits(digits: &mut Vec<u8>, factor: u32) {
    let mut carry: u32 = 0;
    for d in digits.iter_mut().rev() {
        let v = u32::from(*d) * factor + carry;
        *d = (v % 10) as u8;
        carry = v / 10;
    }
    let mut prefix = Vec::new();
    while carry > 0 {
        prefix.push((carry % 10) as u8);
        carry /= 10;
    }
    prefix.reverse();
    if !prefix.is_empty() {
        prefix.append(digits);
        *digits = prefix;
    }
}

fn digits_to_u128(digits: &[u8]) -> Option<u128> {
    digits.iter().try_fold(0u128, |acc, &d| {
        acc.checked_mul(10)?.checked_add(u128::from(d))
    })
}

// ---- printing ----

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.nanos == 0 {
            return f.write_str("0");
        }
        let sign = if self.nanos < 0 { "-" } else { "" };
        let magnitude = self.nanos.unsigned_abs();
        let nanos_per_unit = NANOS_PER_UNIT as u128;
        // Binary notation needs a whole multiple of 1Ki; anything else prints as decimal SI
        // (Kubernetes would print a bare number, which parses back as decimal SI and then
        // prints differently, so this keeps the canonical form stable).
        if self.format == Format::BinarySi
            && magnitude >= 1024 * nanos_per_unit
            && magnitude.is_multiple_of(1024 * nanos_per_unit)
        {
            let mut units = magnitude / nanos_per_unit;
            let mut exp = 0;
            while exp < 6 && units.is_multiple_of(1024) {
                units /= 1024;
                exp += 1;
            }
            let suffix = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"][exp];
            return write!(f, "{sign}{units}{suffix}");
        }
        // mantissa * 10^exponent, exponent a multiple of 3 (Kubernetes' AsCanonicalBytes).
        let mut mantissa = magnitude;
        let mut exponent: i64 = -9;
        while mantissa.is_multiple_of(10) {
            mantissa /= 10;
            exponent += 1;
        }
        while exponent.rem_euclid(3) != 0 {
            mantissa *= 10;
            exponent -= 1;
        }
        if self.format == Format::DecimalExponent {
            return if exponent == 0 {
                write!(f, "{sign}{mantissa}")
            } else {
                write!(f, "{sign}{mantissa}e{exponent}")
            };
        }
        while exponent > 18 {
            mantissa *= 1000;
            exponent -= 3;
        }
        let suffix = match exponent {
            -9 => "n",
            -6 => "u",
            -3 => "m",
            3 => "k",
            6 => "M",
            9 => "G",
            12 => "T",
            15 => "P",
            18 => "E",
            _ => "",
        };
        write!(f, "{sign}{mantissa}{suffix}")
    }
}

// ---- serde ----

impl Serialize for Quantity {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

struct QuantityVisitor;

impl Visitor<'_> for QuantityVisitor {
    type Value = Quantity;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a quantity as a string (such as \"500m\" or \"1Gi\") or an integer")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Quantity, E> {
        Quantity::parse(v).map_err(E::custom)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Quantity, E> {
        Ok(Quantity::from_value(v, Format::DecimalSi))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Quantity, E> {
        Ok(Quantity::from_nano_value(
            i128::from(v) * NANOS_PER_UNIT,
            Format::DecimalSi,
        ))
    }

    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Quantity, E> {
        v.checked_mul(NANOS_PER_UNIT)
            .map(|n| Quantity::from_nano_value(n, Format::DecimalSi))
            .ok_or_else(|| {
                E::custom(QuantityError::Overflow {
                    input: v.to_string(),
                })
            })
    }

    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Quantity, E> {
        match i128::try_from(v) {
            Ok(v) => self.visit_i128(v),
            Err(_) => Err(E::custom(QuantityError::Overflow {
                input: v.to_string(),
            })),
        }
    }
}

impl<'de> Deserialize<'de> for Quantity {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(QuantityVisitor)
    }
}

impl JsonSchema for Quantity {
    fn schema_name() -> Cow<'static, str> {
        "Quantity".into()
    }

    fn schema_id() -> Cow<'static, str> {
        "api_types::Quantity".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A Kubernetes quantity such as \"500m\", \"2\", \"256Mi\" or \"1e3\"; an integer is a number of whole units.",
            "anyOf": [
                {"type": "integer"},
                {"type": "string", "pattern": QUANTITY_PATTERN}
            ],
            "x-kubernetes-int-or-string": true
        })
    }
}

// ---- IntOrString ----

/// An integer or a string, as Kubernetes' `intstr.IntOrString`: `maxSurge: 1` or `maxSurge: "25%"`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum IntOrString {
    /// A plain count.
    Int(i32),
    /// A string, normally a percentage such as `"25%"`.
    String(String),
}

impl Default for IntOrString {
    fn default() -> Self {
        IntOrString::Int(0)
    }
}

/// Why an [`IntOrString`] could not be resolved to a count.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IntOrStringError {
    /// A string that is not `<integer>%`.
    #[error("invalid value for IntOrString: {0:?} is not a percentage (e.g. \"25%\")")]
    NotAPercentage(String),
    /// The scaled result does not fit in an `i32`.
    #[error("invalid value for IntOrString: {0:?} of {1} is out of range")]
    OutOfRange(String, i32),
}

impl IntOrString {
    /// The percentage, when this is a string of the form `<integer>%`.
    pub fn percentage(&self) -> Option<i64> {
        match self {
            IntOrString::Int(_) => None,
            IntOrString::String(s) => {
                let digits = s.strip_suffix('%')?;
                let (negative, digits) = match digits.strip_prefix('-') {
                    Some(d) => (true, d),
                    None => (false, digits),
                };
                if digits.is_empty()
                    || digits.len() > 12
                    || !digits.bytes().all(|c| c.is_ascii_digit())
                {
                    return None;
                }
                let v: i64 = digits.parse().ok()?;
                Some(if negative { -v } else { v })
            }
        }
    }

    /// Resolves against `total`: an integer is itself; `"25%"` of 10 is 3 rounding up, 2
    /// rounding down (Kubernetes' `GetScaledValueFromIntOrPercent`).
    pub fn resolve(&self, total: i32, round_up: bool) -> Result<i32, IntOrStringError> {
        match self {
            IntOrString::Int(v) => Ok(*v),
            IntOrString::String(s) => {
                let pct = self
                    .percentage()
                    .ok_or_else(|| IntOrStringError::NotAPercentage(s.clone()))?;
                let product = i128::from(pct) * i128::from(total);
                let scaled = if round_up {
                    product.div_euclid(100) + i128::from(product.rem_euclid(100) != 0)
                } else {
                    product.div_euclid(100)
                };
                i32::try_from(scaled).map_err(|_| IntOrStringError::OutOfRange(s.clone(), total))
            }
        }
    }
}

impl fmt::Display for IntOrString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IntOrString::Int(v) => write!(f, "{v}"),
            IntOrString::String(s) => f.write_str(s),
        }
    }
}

impl From<i32> for IntOrString {
    fn from(v: i32) -> Self {
        IntOrString::Int(v)
    }
}

impl From<&str> for IntOrString {
    fn from(v: &str) -> Self {
        IntOrString::String(v.to_string())
    }
}

impl Serialize for IntOrString {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            IntOrString::Int(v) => serializer.serialize_i32(*v),
            IntOrString::String(s) => serializer.serialize_str(s),
        }
    }
}

struct IntOrStringVisitor;

impl Visitor<'_> for IntOrStringVisitor {
    type Value = IntOrString;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an integer or a string such as \"25%\"")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<IntOrString, E> {
        Ok(IntOrString::String(v.to_string()))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<IntOrString, E> {
        i32::try_from(v)
            .map(IntOrString::Int)
            .map_err(|_| E::invalid_value(de::Unexpected::Signed(v), &"a 32-bit integer"))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<IntOrString, E> {
        i32::try_from(v)
            .map(IntOrString::Int)
            .map_err(|_| E::invalid_value(de::Unexpected::Unsigned(v), &"a 32-bit integer"))
    }
}

impl<'de> Deserialize<'de> for IntOrString {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(IntOrStringVisitor)
    }
}

impl JsonSchema for IntOrString {
    fn schema_name() -> Cow<'static, str> {
        "IntOrString".into()
    }

    fn schema_id() -> Cow<'static, str> {
        "api_types::IntOrString".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "An integer, or a string such as \"25%\".",
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "x-kubernetes-int-or-string": true
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn q(s: &str) -> Quantity {
        Quantity::parse(s).unwrap()
    }

    const U: i128 = NANOS_PER_UNIT;

    #[test]
    fn parses_kubernetes_examples() {
        // (input, nano-units, canonical string)
        let cases: &[(&str, i128, &str)] = &[
            ("0", 0, "0"),
            ("-0", 0, "0"),
            ("500m", 500_000_000, "500m"),
            ("2", 2 * U, "2"),
            ("0.5", 500_000_000, "500m"),
            ("256Mi", (256 << 20) * U, "256Mi"),
            ("1Gi", (1 << 30) * U, "1Gi"),
            ("1e3", 1000 * U, "1e3"),
            ("1E3", 1000 * U, "1e3"),
            ("100n", 100, "100n"),
            ("1.5Gi", (1536 << 20) * U, "1536Mi"),
            ("+1", U, "1"),
            ("-1", -U, "-1"),
            ("1024Mi", (1 << 30) * U, "1Gi"),
            ("1000m", U, "1"),
            ("1.5", 1_500_000_000, "1500m"),
            ("0.5Ki", 512 * U, "512"),
            ("1k", 1000 * U, "1k"),
            ("1000", 1000 * U, "1k"),
            ("1E", 1_000_000_000_000_000_000 * U, "1E"),
            ("12345", 12345 * U, "12345"),
            ("1.", U, "1"),
            (".5", 500_000_000, "500m"),
            ("0.0001", 100_000, "100u"),
            ("5e-3", 5_000_000, "5e-3"),
            ("1e+3", 1000 * U, "1e3"),
            ("1.5e3", 1500 * U, "1500"),
            ("1Ki", 1024 * U, "1Ki"),
            ("1000Ki", 1000 * 1024 * U, "1000Ki"),
            ("-1.5Gi", -(1536 << 20) * U, "-1536Mi"),
            ("007", 7 * U, "7"),
            ("1e0", U, "1"),
            ("1u", 1000, "1u"),
            ("2Ei", (2 << 60) * U, "2Ei"),
            ("1024Ei", (1024 << 60) * U, "1024Ei"),
        ];
        for (input, nanos, canonical) in cases {
            let parsed = q(input);
            assert_eq!(parsed.nano_value(), *nanos, "{input}");
            assert_eq!(parsed.to_string(), *canonical, "{input}");
        }
        assert_eq!(q("1Gi").format(), Format::BinarySi);
        assert_eq!(q("1e3").format(), Format::DecimalExponent);
        assert_eq!(q("0.5Ki").format(), Format::DecimalSi);
    }

    #[test]
    fn rounds_up_below_one_nano() {
        assert_eq!(q("0.1n").nano_value(), 1);
        assert_eq!(q("1.0000000001").nano_value(), 1_000_000_001);
        assert_eq!(q("-0.1n").nano_value(), -1);
        assert_eq!(q("1e-20").nano_value(), 1);
        assert_eq!(q("0e99999999999999999999").nano_value(), 0);
        assert_eq!(
            q("1.0000000000000000000000000000000000001Ki").nano_value(),
            1024 * NANOS_PER_UNIT + 1
        );
    }

    #[test]
    fn format_errors_name_the_rule() {
        for bad in [
            "", "abc", "1x", "1 ", " 1", "--1", ".", "+", "1Kib", "1e", "1..5", "1e3.5",
        ] {
            let err = Quantity::parse(bad).unwrap_err();
            let msg = err.to_string();
            assert!(
                msg.contains("quantities must match the regular expression")
                    || msg.contains("unable to parse quantity's suffix"),
                "{bad}: {msg}"
            );
        }
        assert_eq!(
            Quantity::parse("1x").unwrap_err().to_string(),
            "invalid quantity \"1x\": quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"
        );
        assert!(matches!(
            Quantity::parse("1kK"),
            Err(QuantityError::Suffix { .. })
        ));
        assert!(matches!(
            Quantity::parse("1e"),
            Err(QuantityError::Suffix { .. })
        ));
    }

    #[test]
    fn overflow_is_an_error() {
        for bad in [
            "1e30",
            "1e100",
            "1e99999999999999999999999",
            "999999999999999999999999999999999999999999",
            "200000000000000000000000000000",
            "1000000000000Ei",
        ] {
            assert!(
                matches!(Quantity::parse(bad), Err(QuantityError::Overflow { .. })),
                "{bad}"
            );
        }
        assert!(Quantity::parse("1e20").is_ok());
        assert!(Quantity::parse("-170141183460469231731687303715.884105727").is_ok());
        assert!(Quantity::parse("170141183460469231731687303715.884105728").is_err());
    }

    #[test]
    fn ordering_and_equality_by_value() {
        assert!(q("1Gi") > q("1G"));
        assert_eq!(q("1000m"), q("1"));
        assert_eq!(q("1Gi"), q("1024Mi"));
        assert!(q("-1") < q("0"));
        assert!(q("999m") < q("1"));
    }

    #[test]
    fn arithmetic() {
        assert_eq!(q("1").checked_add(&q("500m")).unwrap().to_string(), "1500m");
        assert_eq!(
            q("1Gi").checked_sub(&q("512Mi")).unwrap().to_string(),
            "512Mi"
        );
        assert_eq!(q("0").checked_add(&q("1Ki")).unwrap().to_string(), "1Ki");
        assert_eq!(
            q("1Gi").checked_add(&q("1m")).unwrap().to_string(),
            "1073741824001m"
        );
        let max = Quantity::from_nano_value(i128::MAX, Format::DecimalSi);
        assert!(max.checked_add(&q("1n")).is_none());
        assert!(
            Quantity::from_nano_value(i128::MIN, Format::DecimalSi)
                .checked_sub(&q("1n"))
                .is_none()
        );
    }

    #[test]
    fn scaled_values() {
        assert_eq!(q("1500m").value(), 2);
        assert_eq!(q("-1500m").value(), -2);
        assert_eq!(q("1n").milli_value(), 1);
        assert_eq!(q("2").milli_value(), 2000);
        assert_eq!(q("1Ki").value(), 1024);
    }

    #[test]
    fn display_extremes() {
        let min = Quantity::from_nano_value(i128::MIN, Format::DecimalSi);
        assert_eq!(q(&min.to_string()), min);
        let max = Quantity::from_nano_value(i128::MAX, Format::BinarySi);
        assert_eq!(q(&max.to_string()), max);
        assert_eq!(q("1e21").to_string(), "1e21");
        assert_eq!(q("1000E").to_string(), "1000E");
        assert_eq!(q("1000000E").to_string(), "1000000E");
    }

    #[test]
    fn serde_string_and_integer() {
        let v: Quantity = serde_json::from_str("\"256Mi\"").unwrap();
        assert_eq!(v, q("256Mi"));
        let v: Quantity = serde_json::from_str("3").unwrap();
        assert_eq!(v.to_string(), "3");
        let v: Quantity = serde_json::from_str("-3").unwrap();
        assert_eq!(v.to_string(), "-3");
        assert_eq!(serde_json::to_string(&q("1024Mi")).unwrap(), "\"1Gi\"");
        let err = serde_json::from_str::<Quantity>("0.5")
            .unwrap_err()
            .to_string();
        assert!(err.contains("expected a quantity as a string"), "{err}");
        let err = serde_json::from_str::<Quantity>("\"x\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("quantities must match"), "{err}");
    }

    #[test]
    fn int_or_string() {
        let a: IntOrString = serde_json::from_str("1").unwrap();
        assert_eq!(a, IntOrString::Int(1));
        let b: IntOrString = serde_json::from_str("\"25%\"").unwrap();
        assert_eq!(b, IntOrString::String("25%".into()));
        assert_eq!(serde_json::to_string(&b).unwrap(), "\"25%\"");
        assert_eq!(b.resolve(10, true).unwrap(), 3);
        assert_eq!(b.resolve(10, false).unwrap(), 2);
        assert_eq!(b.resolve(4, true).unwrap(), 1);
        assert_eq!(a.resolve(10, true).unwrap(), 1);
        assert_eq!(IntOrString::from("100%").resolve(7, false).unwrap(), 7);
        let err = IntOrString::from("25").resolve(10, true).unwrap_err();
        assert!(err.to_string().contains("is not a percentage"));
        assert!(IntOrString::from("x%").resolve(10, true).is_err());
        assert_eq!(
            IntOrString::from("999999999999%").resolve(i32::MAX, true),
            Err(IntOrStringError::OutOfRange(
                "999999999999%".into(),
                i32::MAX
            ))
        );
        assert_eq!(IntOrString::from("-10%").resolve(15, true).unwrap(), -1);
        assert_eq!(IntOrString::from("-10%").resolve(15, false).unwrap(), -2);
        assert!(serde_json::from_str::<IntOrString>("4294967296").is_err());
        assert!(serde_json::from_str::<IntOrString>("true").is_err());
    }

    fn format_strategy() -> impl Strategy<Value = Format> {
        prop_oneof![
            Just(Format::DecimalSi),
            Just(Format::BinarySi),
            Just(Format::DecimalExponent)
        ]
    }

    fn nanos_strategy() -> impl Strategy<Value = i128> {
        prop_oneof![
            any::<i128>(),
            any::<i64>().prop_map(i128::from),
            (any::<i32>(), 0u32..12).prop_map(|(m, e)| i128::from(m) * 10i128.pow(e)),
            (any::<i16>(), 0u32..7)
                .prop_map(|(m, k)| i128::from(m) * 1024i128.pow(k) * NANOS_PER_UNIT),
        ]
    }

    proptest! {
        #[test]
        fn parse_display_round_trip(nanos in nanos_strategy(), format in format_strategy()) {
            let quantity = Quantity::from_nano_value(nanos, format);
            let text = quantity.to_string();
            let parsed = Quantity::parse(&text).unwrap();
            prop_assert_eq!(parsed, quantity);
            prop_assert_eq!(parsed.nano_value(), nanos);
            // The canonical form is stable.
            prop_assert_eq!(parsed.to_string(), text);
        }

        #[test]
        fn ordering_agrees_with_value(a in nanos_strategy(), b in nanos_strategy(), fa in format_strategy(), fb in format_strategy()) {
            let qa = Quantity::from_nano_value(a, fa);
            let qb = Quantity::from_nano_value(b, fb);
            prop_assert_eq!(qa.cmp(&qb), a.cmp(&b));
            prop_assert_eq!(qa == qb, a == b);
        }

        #[test]
        fn parsing_text_never_panics_and_is_stable(text in "[+-]?[0-9]{0,30}(\\.[0-9]{0,30})?([eE][+-]?[0-9]{1,3}|[numkMGTPE]|[KMGTPE]i)?") {
            if let Ok(quantity) = Quantity::parse(&text) {
                let canonical = quantity.to_string();
                let again = Quantity::parse(&canonical).unwrap();
                prop_assert_eq!(again, quantity);
                prop_assert_eq!(again.to_string(), canonical);
            }
        }

        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,40}") {
            let _ = Quantity::parse(&text);
        }
    }
}
