//! The standard normal tail and its inverse, enough for gate p-values.

/// P(Z ≥ z) for a standard normal Z.
pub fn upper_tail(z: f64) -> f64 {
    0.5 * erfc(z / std::f64::consts::SQRT_2)
}

/// The z with P(Z ≥ z) = `alpha`, by bisection on [`upper_tail`] (60 halvings
/// of [0, 40] is below f64 resolution; the gates call it once per decision).
pub fn z_for_upper_tail(alpha: f64) -> f64 {
    let (mut low, mut high) = (-40.0f64, 40.0f64);
    for _ in 0..100 {
        let mid = 0.5 * (low + high);
        if upper_tail(mid) > alpha {
            low = mid;
        } else {
            high = mid;
        }
    }
    0.5 * (low + high)
}

/// The complementary error function, Numerical Recipes' `erfcc` (Chebyshev
/// fit, relative error below 1.2e-7 everywhere), enough for gate p-values.
fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98
                                + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let r = t * poly.exp();
    if x >= 0.0 {
        r
    } else {
        2.0 - r
    }
}
