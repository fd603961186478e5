//! Bounded random + mutation fuzz loop. catch_unwind is only a measuring
//! tool here: it lets the loop count panics and keep one input per site.

use crate::adapters::{self, DecFn, Outcome};
use crate::inputs::{frame, hex, valid_v3, valid_v5, var_int};
use crate::{run, Run, MAX_REQ};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

pub struct Rng(u64);
impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545F4914F6CDD1D)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    pub fn byte(&mut self) -> u8 {
        self.next() as u8
    }
}

const INTERESTING: [u8; 10] = [0x00, 0x01, 0x02, 0x7F, 0x80, 0xFF, 0xFE, 0x05, 0x04, 0x26];
/// Property ids, to make random property sections more often well-formed.
const PROP_IDS: [u8; 27] = [
    0x01, 0x02, 0x03, 0x08, 0x09, 0x0B, 0x11, 0x12, 0x13, 0x15, 0x16, 0x17, 0x18, 0x19, 0x1A,
    0x1C, 0x1F, 0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0x27, 0x28, 0x29, 0x2A,
];

fn header_len(p: &[u8]) -> Option<usize> {
    for i in 1..p.len().min(5) {
        if p[i] & 0x80 == 0 {
            return Some(i + 1);
        }
    }
    None
}

/// Random input: 1/3 pure random bytes, 2/3 a correctly framed packet of a
/// random type whose body is random (sometimes starting with a CONNECT
/// protocol-name prefix, sometimes sprinkled with property ids).
fn random_input(r: &mut Rng, out: &mut Vec<u8>) {
    out.clear();
    let len = r.below(513);
    match r.below(3) {
        0 => {
            for _ in 0..len {
                out.push(r.byte());
            }
        }
        _ => {
            let typ = 1 + r.below(15) as u8;
            let flags = match typ {
                3 => r.byte() & 0x0F,
                6 | 8 | 10 => 0x02,
                _ => {
                    if r.below(16) == 0 {
                        r.byte() & 0x0F
                    } else {
                        0
                    }
                }
            };
            let mut body = Vec::with_capacity(len);
            if typ == 1 && r.below(2) == 0 {
                body.extend_from_slice(&[0, 4, b'M', b'Q', b'T', b'T', if r.below(2) == 0 { 4 } else { 5 }]);
            }
            let blen = r.below(510);
            while body.len() < blen {
                match r.below(8) {
                    0 => body.push(PROP_IDS[r.below(PROP_IDS.len())]),
                    1 => body.push(INTERESTING[r.below(INTERESTING.len())]),
                    2 => {
                        let n = r.below(6) as u8;
                        body.extend_from_slice(&[0, n]);
                    }
                    _ => body.push(r.byte()),
                }
            }
            *out = frame((typ << 4) | flags, &body);
            if out.len() > 512 {
                out.truncate(512);
            }
        }
    }
}

fn mutate(r: &mut Rng, seed: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(seed);
    let n = 1 + r.below(4);
    for _ in 0..n {
        if out.is_empty() {
            out.push(r.byte());
        }
        let i = r.below(out.len());
        match r.below(9) {
            0 => out[i] ^= 1 << r.below(8),
            1 => out[i] = INTERESTING[r.below(INTERESTING.len())],
            2 => out[i] = r.byte(),
            3 => {
                let k = 1 + r.below(4);
                for _ in 0..k {
                    out.insert(i, r.byte());
                }
            }
            4 => {
                let k = (1 + r.below(8)).min(out.len() - i);
                out.drain(i..i + k);
            }
            5 => out.truncate(i),
            6 => {
                let j = r.below(out.len());
                let k = (1 + r.below(16)).min(out.len() - j);
                let chunk: Vec<u8> = out[j..j + k].to_vec();
                let at = r.below(out.len() + 1);
                for (o, b) in chunk.into_iter().enumerate() {
                    out.insert(at + o, b);
                }
            }
            7 => out[i] = PROP_IDS[r.below(PROP_IDS.len())],
            _ => {
                // u16 length field nudged
                if i + 1 < out.len() {
                    out[i] = 0;
                    out[i + 1] = out[i + 1].wrapping_add(r.below(5) as u8).wrapping_sub(2);
                }
            }
        }
    }
    // half the time, repair the remaining length so the body is parsed
    if r.below(2) == 0 && !out.is_empty() {
        if let Some(h) = header_len(out) {
            let body: Vec<u8> = out[h..].to_vec();
            let c = out[0];
            *out = frame(c, &body);
        } else if out.len() > 1 {
            let body: Vec<u8> = out[1..].to_vec();
            let c = out[0];
            *out = frame(c, &body);
        }
    }
    out.truncate(512);
}

#[derive(Default)]
struct Stats {
    runs: u64,
    ok: u64,
    err: u64,
    incomplete: u64,
    panics: u64,
    sites: BTreeMap<String, (u64, String, Vec<u8>)>,
    /// up to 64 distinct inputs per panic location, re-run later with backtraces
    samples: BTreeMap<String, Vec<Vec<u8>>>,
    big_allocs: u64,
    biggest: (usize, Vec<u8>),
}

impl Stats {
    fn record(&mut self, f: DecFn, input: &[u8]) {
        MAX_REQ.store(0, Relaxed);
        let res = run(f, input);
        let m = MAX_REQ.load(Relaxed);
        self.runs += 1;
        if m >= (1 << 20) {
            self.big_allocs += 1;
        }
        if m > self.biggest.0 {
            self.biggest = (m, input.to_vec());
        }
        match res {
            Run::Done(Outcome::Ok(_)) => self.ok += 1,
            Run::Done(Outcome::Err(_)) => self.err += 1,
            Run::Done(Outcome::Incomplete) => self.incomplete += 1,
            Run::Panic(loc, msg) => {
                self.panics += 1;
                let sm = self.samples.entry(loc.clone()).or_default();
                if sm.len() < 64 {
                    sm.push(input.to_vec());
                }
                let e = self.sites.entry(loc).or_insert((0, msg, input.to_vec()));
                e.0 += 1;
                // keep the shortest reproducer
                if input.len() < e.2.len() {
                    e.2 = input.to_vec();
                }
            }
        }
    }
}

pub fn fuzz_all(filter: Option<&str>, secs: f64, max_random: u64) {
    unsafe { adapters::MAX_SIZE = 1 << 20 };
    let per_phase = Duration::from_secs_f64(secs);
    println!("Fuzz: per decoder, random phase (≤ {} inputs or {:.0} s) then mutation phase ({:.0} s); codecs limited to 1 MiB packets where the API allows; seed fixed.\n", max_random, secs, secs);
    for (name, ver, f) in adapters::all() {
        if let Some(flt) = filter {
            if !name.contains(flt) {
                continue;
            }
        }
        let mut st = Stats::default();
        let mut r = Rng::new(0x9E3779B97F4A7C15 ^ (name.len() as u64) ^ ((ver.len() as u64) << 8));
        let mut buf = Vec::with_capacity(1024);
        let t0 = Instant::now();
        let mut nrand = 0u64;
        while nrand < max_random && t0.elapsed() < per_phase {
            for _ in 0..256 {
                random_input(&mut r, &mut buf);
                st.record(f, &buf);
                nrand += 1;
            }
        }
        let t_rand = t0.elapsed();
        let corpus: Vec<Vec<u8>> = match ver {
            "5.0" => valid_v5(),
            "3.1.1" => valid_v3(),
            _ => {
                let mut c = valid_v3();
                c.extend(valid_v5());
                c
            }
        };
        // seeds themselves first
        for s in &corpus {
            st.record(f, s);
        }
        let t1 = Instant::now();
        let mut nmut = 0u64;
        while t1.elapsed() < per_phase {
            for _ in 0..256 {
                let s = &corpus[r.below(corpus.len())];
                mutate(&mut r, s, &mut buf);
                st.record(f, &buf);
                nmut += 1;
            }
        }
        let t_mut = t1.elapsed();
        println!("### {} — {}\n", name, ver);
        println!("- random inputs: {} in {:.1} s; mutated inputs: {} in {:.1} s", nrand, t_rand.as_secs_f64(), nmut, t_mut.as_secs_f64());
        println!("- outcomes: ok {}, err {}, incomplete {}, **panics {}** ({} distinct sites)", st.ok, st.err, st.incomplete, st.panics, st.sites.len());
        println!("- inputs that made one allocation ≥ 1 MiB: {}; largest single allocation: {} B{}", st.big_allocs, st.biggest.0,
            if st.biggest.0 >= 4096 { format!(" (input `{}`)", hex(&st.biggest.1[..st.biggest.1.len().min(48)])) } else { String::new() });
        for (loc, (n, msg, inp)) in &st.sites {
            println!("  - panic location `{}` ×{}: {} — shortest input ({} B): `{}`", loc, n, msg, inp.len(), hex(inp));
        }
        // attribute each location to the calling line in the crate under test
        crate::BT_MODE.store(true, Relaxed);
        let mut callers: BTreeMap<String, (usize, Vec<u8>)> = BTreeMap::new();
        for (_loc, inputs) in &st.samples {
            for inp in inputs {
                if let Run::Panic(full, _) = run(f, inp) {
                    let e = callers.entry(full).or_insert((0, inp.clone()));
                    e.0 += 1;
                    if inp.len() < e.1.len() {
                        e.1 = inp.clone();
                    }
                }
            }
        }
        crate::BT_MODE.store(false, Relaxed);
        if !callers.is_empty() {
            println!("  - distinct (panic location <- calling line in the crate) among ≤64 kept inputs per location: {}", callers.len());
            for (site, (n, inp)) in &callers {
                println!("    - `{}` (×{} of kept inputs) — shortest: `{}`", site, n, hex(inp));
            }
        }
        println!();
        let _ = var_int(0);
    }
}
