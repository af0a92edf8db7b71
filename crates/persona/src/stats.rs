//! Small statistics for evaluating trait vectors: AUROC, effect size, quantiles, least-squares slope.

/// Area under the ROC curve of `pos` scored above `neg`: the probability that a random positive outranks a random
/// negative, ties counting one half (the Mann-Whitney U statistic over |pos| |neg|). NaN when either side is empty.
pub fn auroc(pos: &[f32], neg: &[f32]) -> f32 {
    if pos.is_empty() || neg.is_empty() {
        return f32::NAN;
    }
    // Rank-sum over the pooled, sorted scores with mid-ranks for ties: O(n log n).
    let mut all: Vec<(f32, bool)> = pos.iter().map(|&x| (x, true)).chain(neg.iter().map(|&x| (x, false))).collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut rank_sum_pos = 0.0f64;
    let mut i = 0;
    while i < all.len() {
        let mut j = i;
        while j + 1 < all.len() && all[j + 1].0 == all[i].0 {
            j += 1;
        }
        let mid_rank = (i + j) as f64 / 2.0 + 1.0;
        rank_sum_pos += all[i..=j].iter().filter(|e| e.1).count() as f64 * mid_rank;
        i = j + 1;
    }
    let (np, nn) = (pos.len() as f64, neg.len() as f64);
    ((rank_sum_pos - np * (np + 1.0) / 2.0) / (np * nn)) as f32
}

pub fn mean(x: &[f32]) -> f32 {
    if x.is_empty() {
        return f32::NAN;
    }
    (x.iter().map(|&v| v as f64).sum::<f64>() / x.len() as f64) as f32
}

/// Sample standard deviation (n - 1); 0 for fewer than two values.
pub fn std_dev(x: &[f32]) -> f32 {
    if x.len() < 2 {
        return 0.0;
    }
    let m = mean(x) as f64;
    let var = x.iter().map(|&v| (v as f64 - m).powi(2)).sum::<f64>() / (x.len() - 1) as f64;
    var.sqrt() as f32
}

/// Cohen's d of `pos` over `neg` with the pooled standard deviation.
pub fn cohen_d(pos: &[f32], neg: &[f32]) -> f32 {
    let (np, nn) = (pos.len() as f64, neg.len() as f64);
    if np < 2.0 || nn < 2.0 {
        return f32::NAN;
    }
    let (sp, sn) = (std_dev(pos) as f64, std_dev(neg) as f64);
    let pooled = (((np - 1.0) * sp * sp + (nn - 1.0) * sn * sn) / (np + nn - 2.0)).sqrt();
    if pooled == 0.0 {
        return f32::NAN;
    }
    ((mean(pos) - mean(neg)) as f64 / pooled) as f32
}

/// Quantiles at `0, 100/(k-1), ..., 100` percent (linear interpolation between order statistics).
pub fn quantiles(x: &[f32], k: usize) -> Vec<f32> {
    let mut s: Vec<f32> = x.iter().copied().filter(|v| v.is_finite()).collect();
    if s.is_empty() || k < 2 {
        return vec![f32::NAN; k];
    }
    s.sort_by(f32::total_cmp);
    (0..k)
        .map(|i| {
            let at = i as f64 / (k - 1) as f64 * (s.len() - 1) as f64;
            let (lo, hi) = (at.floor() as usize, at.ceil() as usize);
            let f = (at - lo as f64) as f32;
            s[lo] + (s[hi] - s[lo]) * f
        })
        .collect()
}

/// Least-squares slope of y over x.
pub fn slope(x: &[f32], y: &[f32]) -> f32 {
    let n = x.len().min(y.len());
    if n < 2 {
        return f32::NAN;
    }
    let (mx, my) = (mean(&x[..n]) as f64, mean(&y[..n]) as f64);
    let (mut sxy, mut sxx) = (0.0, 0.0);
    for i in 0..n {
        sxy += (x[i] as f64 - mx) * (y[i] as f64 - my);
        sxx += (x[i] as f64 - mx).powi(2);
    }
    if sxx == 0.0 {
        return f32::NAN;
    }
    (sxy / sxx) as f32
}

pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum::<f64>() as f32
}

pub fn norm(a: &[f32]) -> f32 {
    dot(a, a).sqrt()
}

/// `a / |a|`, or None for a zero (or non-finite) vector.
pub fn unit(a: &[f32]) -> Option<Vec<f32>> {
    let n = norm(a);
    (n > 0.0 && n.is_finite()).then(|| a.iter().map(|x| x / n).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auroc_counts_pairs_and_ties() {
        assert_eq!(auroc(&[3.0, 4.0], &[1.0, 2.0]), 1.0);
        assert_eq!(auroc(&[1.0, 2.0], &[3.0, 4.0]), 0.0);
        // pairs: (2>1) (2<3) (4>1) (4>3) -> 3/4; a tie counts 1/2.
        assert_eq!(auroc(&[2.0, 4.0], &[1.0, 3.0]), 0.75);
        assert_eq!(auroc(&[1.0], &[1.0]), 0.5);
        assert!(auroc(&[], &[1.0]).is_nan());
    }

    #[test]
    fn effect_size_quantiles_slope() {
        let d = cohen_d(&[2.0, 4.0], &[0.0, 2.0]);
        assert!((d - 2.0 / 2f32.sqrt()).abs() < 1e-6, "{d}");
        assert_eq!(quantiles(&[4.0, 0.0, 2.0], 3), vec![0.0, 2.0, 4.0]);
        assert_eq!(quantiles(&[0.0, 10.0], 5), vec![0.0, 2.5, 5.0, 7.5, 10.0]);
        assert!((slope(&[0.0, 1.0, 2.0], &[1.0, 3.0, 5.0]) - 2.0).abs() < 1e-6);
    }
}
