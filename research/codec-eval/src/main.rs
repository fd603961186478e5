//! Evaluation harness for MQTT codec crates (see REPORT.md).
//!
//!   codec-eval cases               malformed + forbidden input tables
//!   codec-eval fuzz SECS MAXRAND   random + mutation fuzz, every decoder
//!   codec-eval fuzz1 NAME SECS MAXRAND   one decoder family (substring of its name)
//!   codec-eval bench ITERS         PUBLISH decode/encode allocations + time

mod adapters;
mod bench;
mod fuzz;
mod inputs;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::RefCell;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

/// Counting allocator: number of alloc/realloc calls and the largest single
/// request since the last reset.
pub struct Counting;
pub static ALLOCS: AtomicUsize = AtomicUsize::new(0);
pub static REALLOCS: AtomicUsize = AtomicUsize::new(0);
pub static MAX_REQ: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Relaxed);
        MAX_REQ.fetch_max(l.size(), Relaxed);
        System.alloc(l)
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Relaxed);
        MAX_REQ.fetch_max(l.size(), Relaxed);
        System.alloc_zeroed(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        System.dealloc(p, l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        REALLOCS.fetch_add(1, Relaxed);
        MAX_REQ.fetch_max(n, Relaxed);
        System.realloc(p, l, n)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

thread_local! {
    /// (location "file:line:col", message) of the last panic on this thread.
    pub static LAST_PANIC: RefCell<Option<(String, String)>> = const { RefCell::new(None) };
}

/// When set, the panic hook also records the first stack frame that lies in
/// the crate under test (panics raised inside `bytes`/`core` are attributed to
/// their caller). Off during the fuzz loop (too slow), on when re-running the
/// kept reproducers.
pub static BT_MODE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// "/root/.cargo/registry/src/index.crates.io-XXXX/bytes-1.12.2/src/lib.rs" -> "bytes-1.12.2/src/lib.rs"
fn shorten(f: &str) -> &str {
    match f.find("/src/index.crates.io-") {
        Some(i) => {
            let rest = &f[i + 5..];
            rest.splitn(2, '/').nth(1).unwrap_or(rest)
        }
        None => f,
    }
}

fn caller_frame() -> String {
    let bt = std::backtrace::Backtrace::force_capture().to_string();
    const CRATES: [&str; 5] = ["mqtt-proto-", "rmqtt-codec-", "mqute-codec-", "mqttbytes-", "mqttrs-"];
    for line in bt.lines() {
        let l = line.trim();
        if let Some(rest) = l.strip_prefix("at ") {
            if CRATES.iter().any(|c| rest.contains(c)) {
                let f = shorten(rest);
                return f.to_string();
            }
        }
    }
    "?".into()
}

pub fn install_quiet_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let loc = info
            .location()
            .map(|l| {
                // shorten registry paths to crate-relative ones
                let f = l.file();
                let f = shorten(f);
                format!("{}:{}:{}", f, l.line(), l.column())
            })
            .unwrap_or_else(|| "?".into());
        let msg = if let Some(s) = info.payload().downcast_ref::<&str>() {
            s.to_string()
        } else if let Some(s) = info.payload().downcast_ref::<String>() {
            s.clone()
        } else {
            "<non-string payload>".into()
        };
        let loc = if BT_MODE.load(Relaxed) {
            // the backtrace itself allocates; keep it out of the measurement
            let saved = MAX_REQ.load(Relaxed);
            let l = format!("{} <- {}", loc, caller_frame());
            MAX_REQ.store(saved, Relaxed);
            l
        } else {
            loc
        };
        LAST_PANIC.with(|p| *p.borrow_mut() = Some((loc, msg)));
    }));
}

pub enum Run {
    Done(adapters::Outcome),
    Panic(String, String),
}

/// Run one decode under catch_unwind (used only to count panics).
pub fn run(f: adapters::DecFn, b: &[u8]) -> Run {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(b))) {
        Ok(o) => Run::Done(o),
        Err(_) => {
            let (loc, msg) = LAST_PANIC
                .with(|p| p.borrow_mut().take())
                .unwrap_or(("?".into(), "?".into()));
            Run::Panic(loc, msg)
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    install_quiet_panic_hook();
    match args.get(1).map(|s| s.as_str()) {
        Some("cases") => cases(),
        Some("fuzz") => {
            let secs: f64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(15.0);
            let maxr: u64 = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(2_000_000);
            fuzz::fuzz_all(None, secs, maxr);
        }
        Some("fuzz1") => {
            let name = args.get(2).cloned().unwrap_or_default();
            let secs: f64 = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(15.0);
            let maxr: u64 = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(2_000_000);
            fuzz::fuzz_all(Some(&name), secs, maxr);
        }
        Some("bench") => {
            let iters: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(2_000_000);
            bench::bench(iters);
        }
        _ => eprintln!("usage: codec-eval cases | fuzz SECS MAXRAND | fuzz1 NAME SECS MAXRAND | bench ITERS"),
    }
}

fn cell(r: &Run, maxreq: usize) -> String {
    let big = if maxreq >= 1 << 20 { format!(" **[largest alloc {} B]**", maxreq) } else { String::new() };
    let t = match r {
        Run::Done(adapters::Outcome::Ok(s)) => format!("OK `{}`", s.replace('|', "\\|").replace('`', "'")),
        Run::Done(adapters::Outcome::Err(s)) => format!("err `{}`", s.replace('|', "\\|").replace('`', "'")),
        Run::Done(adapters::Outcome::Incomplete) => "incomplete (wants more bytes)".into(),
        Run::Panic(loc, msg) => format!("**PANIC** at `{}`: {}", loc, msg.replace('|', "\\|")),
    };
    format!("{}{}", t, big)
}

fn run_measured(f: adapters::DecFn, b: &[u8]) -> (Run, usize) {
    MAX_REQ.store(0, Relaxed);
    let r = run(f, b);
    (r, MAX_REQ.load(Relaxed))
}

fn cases() {
    unsafe { adapters::MAX_SIZE = 0 };
    BT_MODE.store(true, Relaxed);
    let decs = adapters::all();
    println!("## Malformed inputs (codecs configured with no maximum packet size)\n");
    for c in inputs::malformed() {
        println!("### {} — {}\n\n`{}`\n", c.id, c.what, inputs::hex(&c.bytes));
        println!("| decoder | ver | result |\n|---|---|---|");
        for (name, ver, f) in &decs {
            let (r, m) = run_measured(*f, &c.bytes);
            println!("| {} | {} | {} |", name, ver, cell(&r, m));
        }
        println!();
    }
    println!("## Forbidden-by-spec inputs\n");
    for (c, ver) in inputs::forbidden() {
        println!("### {} ({}) — {}\n\n`{}`\n", c.id, ver, c.what, inputs::hex(&c.bytes));
        println!("| decoder | result |\n|---|---|");
        for (name, v, f) in &decs {
            if *v != ver && *v != "any" {
                continue;
            }
            if *v == "any" {
                continue;
            }
            let (r, m) = run_measured(*f, &c.bytes);
            println!("| {} | {} |", name, cell(&r, m));
        }
        println!();
    }
    println!("## Valid corpus sanity check (every seed must decode)\n");
    for (name, ver, f) in &decs {
        let corpus = if *ver == "5.0" { inputs::valid_v5() } else if *ver == "3.1.1" { inputs::valid_v3() } else { continue };
        let mut bad = Vec::new();
        for p in &corpus {
            match run(*f, p) {
                Run::Done(adapters::Outcome::Ok(_)) => {}
                Run::Done(o) => bad.push(format!("`{}` -> {:?}", inputs::hex(&p[..p.len().min(24)]), o)),
                Run::Panic(l, m) => bad.push(format!("`{}` -> PANIC {} {}", inputs::hex(&p[..p.len().min(24)]), l, m)),
            }
        }
        println!("- {} {}: {}/{} decoded{}", name, ver, corpus.len() - bad.len(), corpus.len(),
            if bad.is_empty() { String::new() } else { format!("; not decoded: {}", bad.join("; ")) });
    }
}
