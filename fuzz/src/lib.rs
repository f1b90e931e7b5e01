//! What the fuzz targets share: read boundaries derived from the input,
//! and a straight reference for the report translation.
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

/// qmail-rspawn's `report()` as protocol §4.2 describes it, over the
/// whole output at once: result -1/0/1 for D/Z/K, `j` the start of the
/// segment being scanned. A copy of the test-only reference in
/// `common/src/report.rs`; it holds no state and caps nothing.
pub fn report_reference(exit: Exit, s: &[u8]) -> Vec<u8> {
    match exit {
        Exit::Signaled => return b"Zqmail-remote crashed.\n".to_vec(),
        Exit::Code(111) => return b"ZUnable to run qmail-remote.\n".to_vec(),
        Exit::Code(0) => {}
        Exit::Code(_) => return b"DUnable to run qmail-remote.\n".to_vec(),
    }
    if s.is_empty() {
        return b"Zqmail-remote produced no output.\n".to_vec();
    }
    let mut result = -1;
    let mut j = 0;
    for (k, &b) in s.iter().enumerate() {
        if b == 0 {
            if s[j] == b'K' {
                result = 1;
                break;
            }
            if s[j] == b'Z' {
                result = 0;
                break;
            }
            if s[j] == b'D' {
                break;
            }
            j = k + 1;
        }
    }
    let mut orr = result;
    if s[0] == b's' {
        orr = 0;
    }
    if s[0] == b'h' {
        orr = -1;
    }
    let mut out = vec![match orr {
        1 => b'K',
        0 => b'Z',
        _ => b'D',
    }];
    let Some(n) = (1..s.len()).find(|&i| s[i] == 0) else {
        return out;
    };
    out.extend_from_slice(&s[1..n]);
    let k = n + 1;
    if result <= orr && k < s.len() && matches!(s[k], b'K' | b'Z' | b'D') {
        let end = (k + 1..s.len()).find(|&i| s[i] == 0).unwrap_or(s.len());
        out.extend_from_slice(&s[k + 1..end]);
    }
    out
}

/// How the reference sees a child's end: qmail-rspawn only tells a
/// signal from an exit code.
#[derive(Clone, Copy, Debug)]
pub enum Exit {
    /// Killed by a signal.
    Signaled,
    /// Exited with this code.
    Code(u8),
}
