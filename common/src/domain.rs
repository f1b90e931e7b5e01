//! The recipient's host, the limit key it is counted under, and which
//! shard owns that key.
//!
//! The key → shard function is part of what a running system agrees on
//! (the supervisor routes by it, status tools may recompute it), so it is
//! written out here rather than borrowed from `std`'s `DefaultHasher`,
//! whose output may change between Rust releases: FNV-1a (64 bit) over
//! the key, then murmur3's `fmix64` finaliser so that keys differing only
//! in their last byte still land far apart, then Lemire's multiply-shift
//! to map the 64-bit hash onto `0..shards` without a division's bias
//! toward low shards.

/// The part of `recipient` after its last '@' (possibly empty), as
/// qmail-rspawn passes it to qmail-remote; `None` if there is no '@'.
pub fn host(recipient: &[u8]) -> Option<&[u8]> {
    let at = recipient.iter().rposition(|&b| b == b'@')?;
    Some(&recipient[at + 1..])
}

/// The normalised form of a host, which limits are counted on: ASCII
/// letters lowercased, trailing dots removed. An IP literal (`[...]`) is
/// kept exactly as written. 8-bit bytes are kept as they are.
pub fn normalise(host: &[u8]) -> Vec<u8> {
    if host.first() == Some(&b'[') {
        return host.to_vec();
    }
    let end = host.iter().rposition(|&b| b != b'.').map_or(0, |i| i + 1);
    host[..end].to_ascii_lowercase()
}

/// The shard (0 .. shards) that owns `key`. Stable: the same key and
/// shard count give the same shard in every process and every release,
/// and keys spread evenly. `shards` is at least 1.
pub fn shard_for(key: &[u8], shards: u16) -> u16 {
    debug_assert!(shards >= 1, "no shards");
    let hash = fmix64(fnv1a64(key));
    let shard = (u128::from(hash) * u128::from(shards)) >> 64;
    // Below `shards`, so it fits; 0 shards (a caller bug) gives shard 0.
    u16::try_from(shard).unwrap_or(0)
}

/// FNV-1a, 64-bit: the offset basis and prime of the FNV specification.
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// murmur3's 64-bit finaliser: every input bit affects every output bit.
fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^= k >> 33;
    k
}

/// Writes `key` with every byte outside printable ASCII as `?`: keys
/// come from recipients, and a status line or log line must stay one
/// line of text.
pub fn printable(key: &[u8]) -> String {
    key.iter()
        .map(|&b| match b {
            0x21..=0x7e => b as char,
            _ => '?',
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_is_after_the_last_at() {
        let table: &[(&[u8], Option<&[u8]>)] = &[
            (b"u@d1.test", Some(b"d1.test")),
            (b"a@b@C.Test.", Some(b"C.Test.")),
            (b"u@", Some(b"")),
            (b"@", Some(b"")),
            (b"u@[10.0.0.1]", Some(b"[10.0.0.1]")),
            (b"u\xff@h\xe9", Some(b"h\xe9")),
            (b"nohost", None),
            (b"", None),
        ];
        for (recipient, want) in table {
            assert_eq!(host(recipient), *want);
        }
    }

    #[test]
    fn normalise_lowercases_and_drops_trailing_dots() {
        let table: &[(&[u8], &[u8])] = &[
            (b"Example.COM", b"example.com"),
            (b"example.com.", b"example.com"),
            (b"example.com...", b"example.com"),
            (b"...", b""),
            (b"", b""),
            (b".a.B", b".a.b"),
            (b"[10.0.0.1]", b"[10.0.0.1]"),
            (b"[IPv6:::1].", b"[IPv6:::1]."),
            (b"\xc3\x89X.test", b"\xc3\x89x.test"),
        ];
        for (host, want) in table {
            assert_eq!(normalise(host), *want);
        }
    }

    /// The FNV specification's own test vectors.
    #[test]
    fn fnv1a64_matches_the_reference() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    /// Pinned: if this fails, the key → shard map changed, and every
    /// deployed supervisor would disagree with its status tools. Change
    /// it only on purpose.
    #[test]
    fn shard_for_is_pinned() {
        // Computed with an independent transcription (Python) of the
        // same three steps.
        let table: &[(&[u8], u64, u16, u16)] = &[
            (b"", 0xefd0_1f60_ba99_2926, 16, 14),
            (b"example.com", 0x9591_d642_1994_d599, 16, 9),
            (b"d1.test", 0x5739_b317_810b_48a4, 7, 2),
            (b"gmail.com", 0x1922_af28_b2cb_0b1d, 1024, 100),
            (b"[10.0.0.1]", 0xfe89_94ee_b1e1_6d6c, 4, 3),
        ];
        for (key, hash, shards, want) in table {
            assert_eq!(fmix64(fnv1a64(key)), *hash, "{key:?}");
            assert_eq!(shard_for(key, *shards), *want, "{key:?}");
        }
        assert_eq!(shard_for(b"anything", 1), 0);
    }

    #[test]
    fn keys_spread_evenly() {
        const KEYS: usize = 100_000;
        for shards in [4u16, 7, 16] {
            let mut counts = vec![0usize; usize::from(shards)];
            for i in 0..KEYS {
                let key = format!("d{i}.test");
                counts[usize::from(shard_for(key.as_bytes(), shards))] += 1;
            }
            let mean = KEYS as f64 / f64::from(shards);
            for (shard, &n) in counts.iter().enumerate() {
                let off = (n as f64 - mean).abs() / mean;
                assert!(off <= 0.05, "{shards} shards: shard {shard} has {n}");
            }
        }
    }
}
