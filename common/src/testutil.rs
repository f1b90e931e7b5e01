//! Test helpers shared by the codecs' tests: feeding one byte stream to a
//! sans-I/O decoder cut at chosen read boundaries.

/// Feeds `bytes` to `decode` cut at `cuts` (ascending offsets), the way
/// short reads would deliver it, looping on each piece's unused rest as a
/// caller must. Returns every item in order.
pub fn feed_cut<T>(
    mut decode: impl FnMut(&[u8]) -> (usize, Option<T>),
    bytes: &[u8],
    cuts: &[usize],
) -> Vec<T> {
    let mut out = Vec::new();
    let mut start = 0;
    for end in cuts.iter().copied().chain([bytes.len()]) {
        let end = end.clamp(start, bytes.len());
        let mut rest = &bytes[start..end];
        while !rest.is_empty() {
            let (used, item) = decode(rest);
            assert!(used <= rest.len(), "decoder used more than it was given");
            assert!(used > 0 || item.is_some(), "decoder made no progress");
            rest = &rest[used..];
            out.extend(item);
        }
        start = end;
    }
    out
}

/// Every pair of cut points `a <= b` in `0..=len`, including the ones that
/// cut nothing.
pub fn cut_pairs(len: usize) -> impl Iterator<Item = [usize; 2]> {
    (0..=len).flat_map(move |a| (a..=len).map(move |b| [a, b]))
}

/// Sorted cut points into `len` bytes from arbitrary proptest numbers.
pub fn cuts_from(raw: &[usize], len: usize) -> Vec<usize> {
    let mut cuts: Vec<usize> = raw.iter().map(|&c| c % (len + 1)).collect();
    cuts.sort_unstable();
    cuts
}

/// One of `values`, uniformly (shrinking toward the first).
pub fn one_of<T: Clone + std::fmt::Debug + 'static>(
    values: Vec<T>,
) -> impl proptest::strategy::Strategy<Value = T> {
    use proptest::strategy::Strategy;
    (0..values.len()).prop_map(move |i| values[i].clone())
}
