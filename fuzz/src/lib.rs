//! What the fuzz targets share: read boundaries derived from the input
//! (cut points, pieces). The report reference they compare against is
//! `shardspawn_common::report::reference` (feature `reference`).
//!
//! The targets are sans-I/O like the codecs they drive: bytes in,
//! assertions out. A failed assertion is a finding; see `README.md`.

/// Ascending cut points into `len` bytes, derived from `seed` (the
/// fuzz input): a mutation of the input moves the read boundaries too.
/// Pieces are 1 to `max` bytes long, `max` itself chosen by the seed
/// from 1 (every byte a read) up to the whole input (one read).
pub fn cuts(seed: &[u8], len: usize) -> Vec<usize> {
    // FNV-1a over the input: a cheap, deterministic seed.
    let mut rng = seed.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    let mut next = || {
        // xorshift64
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let max = match next() % 6 {
        0 => 1,
        1 => 2,
        2 => 7,
        3 => 64,
        4 => 4096,
        _ => len.max(1),
    };
    let mut out = Vec::new();
    let mut at = 0;
    loop {
        // Below `max` + 1, which is a usize.
        at += 1 + (next() % max as u64) as usize;
        if at >= len {
            return out;
        }
        out.push(at);
    }
}

/// The pieces of `bytes` between `cuts`.
pub fn pieces<'a>(
    bytes: &'a [u8],
    cuts: &'a [usize],
) -> impl Iterator<Item = &'a [u8]> {
    let starts = std::iter::once(0).chain(cuts.iter().copied());
    let ends = cuts.iter().copied().chain([bytes.len()]);
    starts.zip(ends).map(|(a, b)| &bytes[a..b])
}
