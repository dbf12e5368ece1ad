//! Currencies and the purchase-points formula, in integers only.
use super::{InvalidField, PointsOverflow};

/// An ISO 4217 currency this ledger accepts, with its minor-unit exponent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Currency {
    code: &'static str,
    exponent: u32,
}

/// ISO 4217 codes whose minor unit is not 1/100. Every other listed code has exponent 2.
const EXPONENT_0: &[&str] = &[
    "BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF", "UGX", "UYI", "VND",
    "VUV", "XAF", "XOF", "XPF",
];
const EXPONENT_3: &[&str] = &["BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"];
const EXPONENT_2: &[&str] = &[
    "AED", "ARS", "AUD", "BDT", "BGN", "BRL", "CAD", "CHF", "CNY", "COP", "CZK", "DKK", "EGP",
    "EUR", "GBP", "GHS", "HKD", "HUF", "IDR", "ILS", "INR", "KES", "KZT", "LKR", "MAD", "MXN",
    "MYR", "NGN", "NOK", "NZD", "PEN", "PHP", "PKR", "PLN", "QAR", "RON", "RSD", "RUB", "SAR",
    "SEK", "SGD", "THB", "TRY", "TWD", "UAH", "USD", "ZAR",
];

impl Currency {
    /// Parses an upper-case ISO 4217 code; `field` names the request field on failure.
    pub fn parse(field: &str, raw: &str) -> Result<Self, InvalidField> {
        let tables = [(EXPONENT_0, 0), (EXPONENT_2, 2), (EXPONENT_3, 3)];
        tables
            .iter()
            .find_map(|(codes, exponent)| {
                codes
                    .iter()
                    .find(|code| **code == raw)
                    .map(|code| Currency {
                        code,
                        exponent: *exponent,
                    })
            })
            .ok_or_else(|| {
                InvalidField::new(
                    field,
                    format!(
                        "{} is not a supported ISO 4217 code",
                        super::rules::quoted(raw)
                    ),
                )
            })
    }

    pub fn code(&self) -> &'static str {
        self.code
    }

    /// Digits after the decimal point: JPY 0, USD 2, KWD 3.
    pub fn exponent(&self) -> u32 {
        self.exponent
    }
}

/// The largest purchase amount accepted, in minor units: a limit far above any real
/// basket that keeps every points computation inside i64.
pub const MAX_AMOUNT_MINOR: i64 = 1_000_000_000_000_000;

/// points = floor(amount_minor × base_rate_bp × multiplier_bp / (10^exponent × 10^8)).
///
/// `base_rate_bp` is points per major unit in basis points and `multiplier_bp` the tier
/// multiplier in basis points, hence the two factors of 10^4. Computed in i128 so no
/// intermediate can wrap; a result beyond i64 is an error.
pub fn purchase_points(
    amount_minor: i64,
    currency: Currency,
    base_rate_bp: i64,
    multiplier_bp: i64,
) -> Result<i64, PointsOverflow> {
    let numerator = i128::from(amount_minor)
        .checked_mul(i128::from(base_rate_bp))
        .and_then(|n| n.checked_mul(i128::from(multiplier_bp)))
        .ok_or(PointsOverflow)?;
    let denominator = 10i128.pow(currency.exponent()) * 100_000_000;
    let points = numerator.div_euclid(denominator);
    i64::try_from(points).map_err(|_| PointsOverflow)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn currency(code: &str) -> Currency {
        Currency::parse("currency", code).unwrap()
    }

    #[test]
    fn exponents_follow_iso_4217() {
        assert_eq!(currency("JPY").exponent(), 0);
        assert_eq!(currency("USD").exponent(), 2);
        assert_eq!(currency("KWD").exponent(), 3);
        assert!(Currency::parse("currency", "usd").is_err());
        assert!(Currency::parse("currency", "XXX").is_err());
    }

    #[test]
    fn points_are_floored() {
        // $12.99 at 1 point per dollar, 1x: 12 points, never 13.
        assert_eq!(
            purchase_points(1299, currency("USD"), 10_000, 10_000),
            Ok(12)
        );
        // $0.99 earns nothing.
        assert_eq!(purchase_points(99, currency("USD"), 10_000, 10_000), Ok(0));
    }

    #[test]
    fn multiplier_and_rate_apply_in_basis_points() {
        // $100 at 2.5 points per dollar, 1.5x: 375.
        assert_eq!(
            purchase_points(10_000, currency("USD"), 25_000, 15_000),
            Ok(375)
        );
        // $33.33 at 1 point per dollar, 1.25x: floor(41.6625) = 41.
        assert_eq!(
            purchase_points(3333, currency("USD"), 10_000, 12_500),
            Ok(41)
        );
    }

    #[test]
    fn currency_exponent_scales_the_amount() {
        assert_eq!(
            purchase_points(1500, currency("JPY"), 10_000, 10_000),
            Ok(1500)
        );
        assert_eq!(
            purchase_points(1500, currency("USD"), 10_000, 10_000),
            Ok(15)
        );
        assert_eq!(
            purchase_points(1500, currency("KWD"), 10_000, 10_000),
            Ok(1)
        );
        assert_eq!(
            purchase_points(1999, currency("KWD"), 10_000, 10_000),
            Ok(1)
        );
    }

    #[test]
    fn overflow_is_rejected_not_wrapped() {
        let jpy = currency("JPY");
        assert_eq!(
            purchase_points(i64::MAX, jpy, 1_000_000, 100_000),
            Err(PointsOverflow)
        );
        // The largest amount still fits at 1x.
        assert_eq!(purchase_points(i64::MAX, jpy, 10_000, 10_000), Ok(i64::MAX));
    }
}
