//! The response rules parser and the judge of a result.
//!
//! Input: byte 0 says where the rest splits (in 256ths) into the rules
//! file's text and a result body. Asserts: `Responses::parse` never
//! panics and names a line of the file when it refuses it; the built-in
//! rules always follow the file's; judging any body never panics, a `K`
//! is always good, and a body holding a file rule's pattern (its `*`s
//! taken out) is decided by a rule, that one or an earlier one.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shardspawn_common::response::{BUILT_IN, Responses, Verdict, judge};

fuzz_target!(|data: &[u8]| {
    let Some((&head, rest)) = data.split_first() else { return };
    let split = rest.len() * usize::from(head) / 256;
    let (text, body) = rest.split_at(split);

    let responses = match Responses::parse(text) {
        Ok(r) => r,
        Err(e) => {
            let lines = text.split(|&b| b == b'\n').count();
            assert!((1..=lines).contains(&e.line), "error on line {}", e.line);
            Responses::built_in()
        }
    };
    assert_eq!(
        responses.rules().len(),
        responses.from_file() + BUILT_IN.len()
    );
    let _ = judge(&responses, body);
    let good = [b"K".as_slice(), body].concat();
    assert_eq!(judge(&responses, &good), Verdict::Good);
    for rule in &responses.rules()[..responses.from_file()] {
        let words: Vec<u8> =
            rule.pattern.bytes().filter(|&b| b != b'*').collect();
        let said = [b"Z".as_slice(), &words].concat();
        let lower = said[1..].to_ascii_lowercase();
        assert!(rule.matches(&lower), "{:?} misses itself", rule.pattern);
        let first = responses
            .rules()
            .iter()
            .position(|r| r.matches(&lower))
            .expect("this rule matches");
        let this = responses
            .rules()
            .iter()
            .position(|r| std::ptr::eq(r, rule))
            .expect("listed");
        assert!(first <= this);
    }
});
