//! Coverage-free mutation: byte flips, interesting values, deletions,
//! duplications, splices of two corpus inputs, dictionary tokens, and fresh
//! structure-aware inputs from the target's generator.

use crate::Target;

/// A small, seedable random number generator (SplitMix64): runs repeat from
/// their seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number below `n` (0 if `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }

    /// True one time in `n`.
    pub fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }

    /// One of `items` (which must not be empty).
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Texts that break parsers: numbers at the edges, escapes, nesting.
const INTERESTING: &[&str] = &[
    "0",
    "-1",
    "-0",
    "1e309",
    "-1e-400",
    "9223372036854775807",
    "9223372036854775808",
    "18446744073709551616",
    "340282366920938463463374607431768211457",
    "0.000000001",
    "NaN",
    "\u{0}",
    "\u{7f}",
    "\u{fffd}",
    "\u{202e}",
    "\\u0000",
    "\\ud800",
    "\"",
    "'",
    "\\",
    "\n",
    "\r\n",
    "\t",
    " ",
    "",
    ":",
    ",",
    "=",
    "!",
    "{",
    "}",
    "[",
    "]",
    "/",
    "..",
    "../",
    "%",
    "&",
    "*",
    "~",
    "null",
    "true",
    "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
    "{\"a\":{\"a\":{\"a\":{\"a\":{\"a\":{}}}}}}",
    "&a [*a, *a, *a, *a]",
];

/// The next input to try: a corpus input mutated, or a fresh generated one
/// (mutated too, sometimes).
pub fn next_input(target: &Target, corpus: &[Vec<u8>], rng: &mut Rng) -> Vec<u8> {
    let mut input = if corpus.is_empty() || rng.one_in(5) {
        (target.generate)(rng)
    } else {
        rng.pick(corpus).clone()
    };
    if input.is_empty() || !rng.one_in(4) {
        let rounds = 1 + rng.below(4);
        for _ in 0..rounds {
            mutate(&mut input, target, corpus, rng);
        }
    }
    input.truncate(target.max_len);
    if let Some(fixup) = target.fixup {
        fixup(&mut input);
    }
    input
}

/// A token: the target's dictionary or the interesting texts.
fn token<'a>(target: &'a Target, rng: &mut Rng) -> &'a [u8] {
    if !target.dictionary.is_empty() && rng.one_in(2) {
        rng.pick(target.dictionary).as_bytes()
    } else {
        rng.pick(INTERESTING).as_bytes()
    }
}

/// A range of `len` bytes: start and end.
fn range(len: usize, rng: &mut Rng) -> (usize, usize) {
    let start = rng.below(len + 1);
    // Mostly short ranges, sometimes long ones.
    let max = if rng.one_in(8) { len - start } else { 16 };
    let end = start + rng.below(max.min(len - start) + 1);
    (start, end)
}

/// Mutates `input` once.
pub fn mutate(input: &mut Vec<u8>, target: &Target, corpus: &[Vec<u8>], rng: &mut Rng) {
    let len = input.len();
    match rng.below(11) {
        0 if len > 0 => {
            let i = rng.below(len);
            input[i] ^= 1 << rng.below(8);
        }
        1 if len > 0 => {
            let i = rng.below(len);
            input[i] = *rng.pick(&[0u8, 0xff, 0x7f, 0x80, b'/', b'.', b'"', b'-', b'0', b'9']);
        }
        2 if len > 0 => {
            let (start, end) = range(len, rng);
            input.drain(start..end);
        }
        3 if len > 0 => {
            let (start, end) = range(len, rng);
            let chunk = input[start..end].to_vec();
            let at = rng.below(input.len() + 1);
            input.splice(at..at, chunk);
        }
        4 | 5 => {
            let at = rng.below(len + 1);
            let token = token(target, rng).to_vec();
            input.splice(at..at, token);
        }
        6 if len > 0 => {
            let (start, end) = range(len, rng);
            let token = token(target, rng).to_vec();
            input.splice(start..end, token);
        }
        7 if !corpus.is_empty() => {
            // Splice: our head, another input's tail.
            let other = rng.pick(corpus);
            let cut = rng.below(len + 1);
            let from = rng.below(other.len() + 1);
            input.truncate(cut);
            input.extend_from_slice(&other[from..]);
        }
        8 => {
            // A run of digits replaced with an edge number.
            let from = rng.below(len);
            if let Some(start) = (from..len)
                .chain(0..from)
                .find(|&i| input[i].is_ascii_digit())
            {
                let end = (start..len)
                    .find(|&i| !input[i].is_ascii_digit())
                    .unwrap_or(len);
                let number = rng
                    .pick(&[
                        "0",
                        "-1",
                        "9223372036854775807",
                        "18446744073709551616",
                        "1e309",
                        "4294967296",
                        "2147483648",
                        "99999999999999999999999999999999999999",
                    ])
                    .as_bytes()
                    .to_vec();
                input.splice(start..end, number);
            }
        }
        9 if len > 0 => {
            let i = rng.below(len);
            input[i] = rng.next_u64() as u8;
        }
        _ => {
            let at = rng.below(len + 1);
            let n = 1 + rng.below(8);
            let bytes: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
            input.splice(at..at, bytes);
        }
    }
}
