//! Results: the row type (also the JSON schema of `--out`), the median of
//! repeated runs, the zeromq/libzmq ratio and the aligned table. Pure: no
//! processes, no clock, no files (so the integration test
//! `tests/throughput_cli.rs` compiles this file and runs its tests).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One measured (or failed) run, or the median of several: a row of the
/// table and an element of the `--out` JSON list.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub(crate) struct Row {
    /// `zeromq` or `libzmq`: the proxy of proxied patterns (`zeromq` = this
    /// crate's), else the whole stack.
    #[serde(rename = "impl")]
    pub(crate) imp: String,
    /// `zeromq` or `libzmq`: the stack of the sender and the receiver.
    #[serde(default)]
    pub(crate) peers: String,
    /// `lossless` (libzmq HWM 0, proxies in `SlowPolicy::Block`) or `lossy`
    /// (libzmq HWM 1000, proxies in `SlowPolicy::Drop`).
    #[serde(default)]
    pub(crate) mode: String,
    /// `pubsub`, `pushpull`, `dealer-router`, `reqrep-latency`, `proxy`, `espresso`, `lvc`.
    pub(crate) pattern: String,
    /// Payload bytes per message (the last frame; pub-sub adds a 4-byte topic frame).
    pub(crate) size: usize,
    /// Messages delivered per second (round trips per second for latency rows).
    pub(crate) msgs_per_s: f64,
    /// Payload megabytes (10^6) per second.
    pub(crate) mb_per_s: f64,
    /// Data messages the sender sent.
    pub(crate) sent: u64,
    /// Data messages the receiver got (requests answered, for latency rows).
    pub(crate) received: u64,
    /// received / sent in percent (one-way rows).
    pub(crate) delivered_pct: Option<f64>,
    /// The receiver's window (first data message to end marker), or the
    /// pinger's, in seconds.
    pub(crate) elapsed_s: f64,
    /// Round-trip percentiles in microseconds (latency rows).
    pub(crate) p50_us: Option<f64>,
    /// 99th percentile.
    pub(crate) p99_us: Option<f64>,
    /// 99.9th percentile.
    pub(crate) p999_us: Option<f64>,
    /// CPU of each process over its window, 100 = one core.
    pub(crate) cpu_send_pct: Option<f64>,
    /// Receiver CPU.
    pub(crate) cpu_recv_pct: Option<f64>,
    /// Proxy CPU (proxied rows).
    pub(crate) cpu_proxy_pct: Option<f64>,
    /// CPU other programs used during the run (a shared machine's noise).
    pub(crate) other_cpu_pct: Option<f64>,
    /// Sender CPU microseconds per delivered message (per round trip for
    /// latency rows): the cost, which a busy machine changes far less than
    /// the rate.
    pub(crate) cpu_send_us: Option<f64>,
    /// Receiver CPU microseconds per delivered message.
    pub(crate) cpu_recv_us: Option<f64>,
    /// Proxy CPU microseconds per delivered message.
    pub(crate) cpu_proxy_us: Option<f64>,
    /// Peak resident memory of the sender in MB (what a lossless libzmq
    /// publisher at HWM 0 queues shows here).
    #[serde(default)]
    pub(crate) rss_send_mb: Option<f64>,
    /// Peak resident memory of the receiver in MB.
    #[serde(default)]
    pub(crate) rss_recv_mb: Option<f64>,
    /// Peak resident memory of the proxy in MB.
    #[serde(default)]
    pub(crate) rss_proxy_mb: Option<f64>,
    /// Capture events the Espresso listener received.
    pub(crate) captured: Option<u64>,
    /// Capture events dropped because the listener was behind.
    pub(crate) capture_drops: Option<u64>,
    /// Messages our proxy dropped for a subscriber whose queue was full.
    pub(crate) proxy_drops: Option<u64>,
    /// Times our proxy paused reading publishers for a full subscriber
    /// queue (`SlowPolicy::Block`).
    #[serde(default)]
    pub(crate) proxy_blocks: Option<u64>,
    /// msgs_per_s of zeromq / libzmq for the same mode, peers, pattern and
    /// size (on zeromq rows): the stacks (direct patterns) or the proxies
    /// (proxied patterns, same peers) side by side.
    pub(crate) ratio: Option<f64>,
    /// Proxied rows: msgs_per_s / that of the direct pub-sub row with the
    /// same mode, peers and size (the ceiling).
    #[serde(default)]
    pub(crate) vs_direct: Option<f64>,
    /// Proxied rows: proxy CPU us/msg / that of libzmq's `zmq_proxy` (the
    /// `proxy` pattern on libzmq) with the same mode, peers and size.
    #[serde(default)]
    pub(crate) proxy_cpu_vs_zmq_proxy: Option<f64>,
    /// msgs_per_s of every run, in run order (the row shows the median run).
    pub(crate) runs: Vec<f64>,
    /// `ok`, or what went wrong.
    pub(crate) status: String,
}

impl Row {
    pub(crate) fn ok(&self) -> bool {
        self.status == "ok"
    }

    fn key(&self) -> Key {
        (
            self.mode.clone(),
            self.pattern.clone(),
            self.peers.clone(),
            self.imp.clone(),
            self.size,
        )
    }

    /// True for rows with a proxy process in the middle.
    pub(crate) fn proxied(&self) -> bool {
        PROXIED.contains(&self.pattern.as_str())
    }
}

type Key = (String, String, String, String, usize);

/// The patterns with a proxy in the middle.
pub(crate) const PROXIED: [&str; 3] = ["proxy", "espresso", "lvc"];

/// What a row measured, in words: `libzmq -> zpatterns lvc -> libzmq`,
/// `zeromq direct`, `libzmq pushpull`.
pub(crate) fn path_name(peers: &str, imp: &str, pattern: &str, proxied: bool) -> String {
    if proxied {
        format!("{peers} -> {} -> {peers}", middle_name(imp, pattern))
    } else if pattern == "pubsub" {
        format!("{imp} direct")
    } else {
        format!("{imp} {pattern}")
    }
}

/// The middle of a proxied row: `zmq_proxy`, `zpatterns proxy`, ...
pub(crate) fn middle_name(imp: &str, pattern: &str) -> String {
    match (imp, pattern) {
        ("libzmq", "proxy") => "zmq_proxy".into(),
        ("libzmq", "espresso") => "espresso.c".into(),
        ("libzmq", "lvc") => "lvcache.c".into(),
        (_, p) => format!("zpatterns {p}"),
    }
}

/// Groups repeated runs of a case (same impl, pattern, size), keeps the run
/// with the median msgs/s (the lower middle for even counts; failed runs
/// only if no run succeeded) and records every run's msgs/s. Order: first
/// appearance.
pub(crate) fn aggregate(rows: &[Row]) -> Vec<Row> {
    let mut order = Vec::new();
    let mut groups: BTreeMap<Key, Vec<&Row>> = BTreeMap::new();
    for r in rows {
        let k = r.key();
        if !groups.contains_key(&k) {
            order.push(k.clone());
        }
        groups.entry(k).or_default().push(r);
    }
    order
        .into_iter()
        .map(|k| {
            let all = &groups[&k];
            let mut ok: Vec<&Row> = all.iter().copied().filter(|r| r.ok()).collect();
            ok.sort_by(|a, b| a.msgs_per_s.total_cmp(&b.msgs_per_s));
            let mut row = match ok.get((ok.len().max(1) - 1) / 2) {
                Some(median) => (*median).clone(),
                None => all[all.len() - 1].clone(),
            };
            row.runs = all
                .iter()
                .filter(|r| r.ok())
                .map(|r| r.msgs_per_s)
                .collect();
            row
        })
        .collect()
}

/// Sets `ratio` on every zeromq row that has a libzmq twin (same mode,
/// peers, pattern, size; for direct patterns the peers are the stack, so
/// the twin is the other stack), and on proxied rows `vs_direct` and
/// `proxy_cpu_vs_zmq_proxy`.
pub(crate) fn add_ratios(rows: &mut [Row]) {
    let good = |r: &&Row| r.ok() && r.msgs_per_s > 0.0;
    let by_key: BTreeMap<Key, (f64, Option<f64>)> = rows
        .iter()
        .filter(good)
        .map(|r| (r.key(), (r.msgs_per_s, r.cpu_proxy_us)))
        .collect();
    let get = |mode: &str, pattern: &str, peers: &str, imp: &str, size: usize| {
        by_key
            .get(&(mode.into(), pattern.into(), peers.into(), imp.into(), size))
            .copied()
    };
    for r in rows.iter_mut().filter(|r| r.ok()) {
        let proxied = r.proxied();
        if r.imp == "zeromq" {
            // Direct patterns: the twin is the libzmq stack (its peers are libzmq too).
            let twin_peers = if proxied { r.peers.as_str() } else { "libzmq" };
            r.ratio = get(&r.mode, &r.pattern, twin_peers, "libzmq", r.size)
                .map(|(rate, _)| r.msgs_per_s / rate);
        }
        if proxied {
            r.vs_direct = get(&r.mode, "pubsub", &r.peers, &r.peers, r.size)
                .map(|(rate, _)| r.msgs_per_s / rate);
            r.proxy_cpu_vs_zmq_proxy = get(&r.mode, "proxy", &r.peers, "libzmq", r.size)
                .and_then(|(_, cpu)| Some(r.cpu_proxy_us? / cpu?));
        }
    }
}

/// `16 B`, `4 KiB`, `64 KiB`, `1.5 MiB`.
pub(crate) fn fmt_size(n: usize) -> String {
    match n {
        n if n >= 1 << 20 && n % (1 << 20) == 0 => format!("{} MiB", n >> 20),
        n if n >= 1024 && n % 1024 == 0 => format!("{} KiB", n >> 10),
        n => format!("{n} B"),
    }
}

/// `950`, `12.3k`, `1.23M`.
pub(crate) fn fmt_rate(x: f64) -> String {
    if x >= 1e6 {
        format!("{:.2}M", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.1}k", x / 1e3)
    } else {
        format!("{x:.0}")
    }
}

fn opt(x: Option<f64>, f: impl Fn(f64) -> String) -> String {
    x.map(f).unwrap_or_else(|| "-".to_owned())
}

/// Sender/proxy/receiver values with `decimals` digits, `-` where absent.
fn triple(values: [Option<f64>; 3], decimals: usize) -> String {
    let [s, p, r] = values.map(|x| opt(x, |v| format!("{v:.decimals$}")));
    format!("{s}/{p}/{r}")
}

/// CPU %, sender/proxy/receiver.
fn cpu(r: &Row) -> String {
    triple([r.cpu_send_pct, r.cpu_proxy_pct, r.cpu_recv_pct], 0)
}

/// Peak RSS in MB, sender/proxy/receiver.
fn rss(r: &Row) -> String {
    triple([r.rss_send_mb, r.rss_proxy_mb, r.rss_recv_mb], 0)
}

/// CPU microseconds per delivered message, sender/proxy/receiver.
fn cpu_us(r: &Row) -> String {
    triple([r.cpu_send_us, r.cpu_proxy_us, r.cpu_recv_us], 2)
}

fn notes(r: &Row) -> String {
    if !r.ok() {
        return r.status.clone();
    }
    let mut n = Vec::new();
    if let Some(c) = r.captured {
        let drops = r.capture_drops.unwrap_or(0);
        let pct = 100.0 * c as f64 / (c + drops).max(1) as f64;
        n.push(format!("captured {pct:.1}%"));
    }
    if let Some(d) = r.proxy_drops.filter(|&d| d > 0) {
        n.push(format!("proxy dropped {d}"));
    }
    if let Some(b) = r.proxy_blocks.filter(|&b| b > 0) {
        n.push(format!("proxy paused {b}x"));
    }
    if r.runs.len() > 1 {
        let (lo, hi) = r
            .runs
            .iter()
            .fold((f64::MAX, 0.0f64), |(lo, hi), &x| (lo.min(x), hi.max(x)));
        n.push(format!(
            "n={} {}..{}",
            r.runs.len(),
            fmt_rate(lo),
            fmt_rate(hi)
        ));
    }
    n.join(", ")
}

const HEADERS: [&str; 18] = [
    "mode",
    "peers",
    "impl",
    "pattern",
    "size",
    "msgs/s",
    "MB/s",
    "deliv%",
    "p50us",
    "p99us",
    "p999us",
    "cpu us/msg s/p/r",
    "cpu% s/p/r",
    "MB rss s/p/r",
    "other%",
    "x direct",
    "ratio",
    "notes",
];

fn rate_cell(r: &Row) -> String {
    if r.ok() {
        fmt_rate(r.msgs_per_s)
    } else {
        "FAILED".into()
    }
}

/// The aligned text table of every row (text columns left, numbers right).
pub(crate) fn table(rows: &[Row]) -> String {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let us = |x: Option<f64>| opt(x, |v| format!("{v:.1}"));
            vec![
                r.mode.clone(),
                r.peers.clone(),
                r.imp.clone(),
                r.pattern.clone(),
                fmt_size(r.size),
                rate_cell(r),
                format!("{:.1}", r.mb_per_s),
                opt(r.delivered_pct, |v| format!("{v:.1}")),
                us(r.p50_us),
                us(r.p99_us),
                us(r.p999_us),
                cpu_us(r),
                cpu(r),
                rss(r),
                opt(r.other_cpu_pct, |v| format!("{v:.0}")),
                opt(r.vs_direct, |v| format!("{v:.2}x")),
                opt(r.ratio, |v| format!("{v:.2}")),
                notes(r),
            ]
        })
        .collect();
    aligned(&HEADERS, &cells, 4)
}

/// Table order of the same-peers view: the direct row, then each proxy
/// with libzmq's first.
fn view_rank(r: &Row) -> (usize, usize) {
    let p = ["pubsub", "proxy", "lvc", "espresso"]
        .iter()
        .position(|p| *p == r.pattern)
        .unwrap_or(9);
    (p, usize::from(r.imp == "zeromq"))
}

/// The same-peers view: for each mode, peers and size, the direct
/// pub-sub row (the ceiling) and every proxy between the same peers, with
/// the proxy's rate as a fraction of the direct one and its CPU per
/// message against `zmq_proxy`'s. Empty when there are no proxied rows.
pub(crate) fn proxy_table(rows: &[Row]) -> String {
    if !rows.iter().any(Row::proxied) {
        return String::new();
    }
    let mut these: Vec<&Row> = rows
        .iter()
        .filter(|r| r.proxied() || r.pattern == "pubsub")
        .collect();
    let peers_rank = |p: &str| usize::from(p != "libzmq");
    these.sort_by(|a, b| {
        (a.mode.as_str(), peers_rank(&a.peers), a.size, view_rank(a)).cmp(&(
            b.mode.as_str(),
            peers_rank(&b.peers),
            b.size,
            view_rank(b),
        ))
    });
    let headers = [
        "mode",
        "size",
        "path",
        "msgs/s",
        "deliv%",
        "cpu us/msg s/p/r",
        "MB rss s/p/r",
        "x direct",
        "proxy cpu / zmq_proxy",
        "notes",
    ];
    let cells: Vec<Vec<String>> = these
        .iter()
        .map(|r| {
            vec![
                r.mode.clone(),
                fmt_size(r.size),
                path_name(&r.peers, &r.imp, &r.pattern, r.proxied()),
                rate_cell(r),
                opt(r.delivered_pct, |v| format!("{v:.1}")),
                cpu_us(r),
                rss(r),
                opt(r.vs_direct, |v| format!("{v:.2}x")),
                opt(r.proxy_cpu_vs_zmq_proxy, |v| format!("{v:.2}")),
                notes(r),
            ]
        })
        .collect();
    aligned(&headers, &cells, 3)
}

/// Aligns `cells` under `headers`: the first `text` columns and the last
/// one left, the others (numbers) right.
fn aligned(headers: &[&str], cells: &[Vec<String>], text: usize) -> String {
    let mut width: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in cells {
        for (w, c) in width.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let left = |i: usize| i < text || i == headers.len() - 1;
    let line = |row: &[String]| {
        let mut s = String::new();
        for (i, c) in row.iter().enumerate() {
            let pad = width[i] - c.chars().count();
            if i > 0 {
                s.push_str("  ");
            }
            if left(i) {
                s.push_str(c);
                s.push_str(&" ".repeat(pad));
            } else {
                s.push_str(&" ".repeat(pad));
                s.push_str(c);
            }
        }
        s.trim_end().to_owned()
    };
    let headers: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    let mut out = line(&headers);
    out.push('\n');
    for row in cells {
        out.push_str(&line(row));
        out.push('\n');
    }
    out
}

/// The `--out` document: a JSON list of rows.
pub(crate) fn json(rows: &[Row]) -> String {
    serde_json::to_string_pretty(rows).expect("rows always serialise")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn row(imp: &str, pattern: &str, size: usize, rate: f64) -> Row {
        Row {
            imp: imp.into(),
            peers: imp.into(),
            mode: "lossless".into(),
            pattern: pattern.into(),
            size,
            msgs_per_s: rate,
            mb_per_s: rate * size as f64 / 1e6,
            status: "ok".into(),
            runs: vec![rate],
            ..Row::default()
        }
    }

    #[test]
    fn median_of_runs_and_ratio() {
        let runs = [
            row("zeromq", "pubsub", 16, 3.0e6),
            row("libzmq", "pubsub", 16, 1.0e6),
            row("zeromq", "pubsub", 16, 1.0e6),
            row("libzmq", "pubsub", 16, 2.0e6),
            row("zeromq", "pubsub", 16, 2.0e6),
            Row {
                status: "failed: timeout".into(),
                ..row("libzmq", "pubsub", 16, 0.0)
            },
        ];
        let mut rows = aggregate(&runs);
        add_ratios(&mut rows);
        assert_eq!(rows.len(), 2);
        assert_eq!(
            (rows[0].imp.as_str(), rows[0].msgs_per_s),
            ("zeromq", 2.0e6)
        );
        assert_eq!(rows[0].runs, [3.0e6, 1.0e6, 2.0e6]);
        // libzmq: two good runs, lower middle; the failed run is left out.
        assert_eq!(rows[1].msgs_per_s, 1.0e6);
        assert_eq!(rows[1].runs.len(), 2);
        assert_eq!(rows[0].ratio, Some(2.0));
        assert_eq!(rows[1].ratio, None);
    }

    #[test]
    fn a_case_that_only_failed_stays_visible() {
        let failed = Row {
            status: "failed: no WARM".into(),
            ..row("zeromq", "lvc", 256, 0.0)
        };
        let rows = aggregate(&[failed]);
        assert_eq!(rows[0].status, "failed: no WARM");
        assert!(table(&rows).contains("FAILED"));
    }

    #[test]
    fn table_is_aligned() {
        let mut rows = vec![
            row("zeromq", "pubsub", 16, 2_500_000.0),
            row("libzmq", "reqrep-latency", 65536, 9_876.0),
        ];
        rows[1].p50_us = Some(101.25);
        rows[0].delivered_pct = Some(99.5);
        let t = table(&rows);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("mode"));
        // Right-aligned numbers end in the same column.
        let end = |l: &str, needle: &str| l.find(needle).unwrap() + needle.len();
        assert_eq!(end(lines[0], "msgs/s"), end(lines[1], "2.50M"));
        assert_eq!(end(lines[1], "2.50M"), end(lines[2], "9.9k"));
        assert!(lines[2].contains("64 KiB") && lines[2].contains("101.2"));
    }

    #[test]
    fn proxy_rows_are_read_against_direct_and_zmq_proxy() {
        let with = |imp: &str, pattern: &str, rate: f64, cpu: Option<f64>| Row {
            peers: "libzmq".into(),
            cpu_proxy_us: cpu,
            ..row(imp, pattern, 16, rate)
        };
        let mut rows = vec![
            with("libzmq", "pubsub", 1.0e6, None),
            with("libzmq", "proxy", 0.7e6, Some(1.0)),
            with("zeromq", "proxy", 0.9e6, Some(0.4)),
            with("zeromq", "lvc", 0.8e6, Some(0.6)),
            // Other peers, other mode: never mixed in.
            Row {
                peers: "zeromq".into(),
                ..row("zeromq", "pubsub", 16, 5.0e6)
            },
            Row {
                mode: "lossy".into(),
                ..with("libzmq", "pubsub", 9.0e6, None)
            },
        ];
        add_ratios(&mut rows);
        let f = |x: Option<f64>| x.map(|v| (v * 100.0).round() / 100.0);
        assert_eq!(f(rows[1].vs_direct), Some(0.7));
        assert_eq!(f(rows[2].vs_direct), Some(0.9));
        assert_eq!(f(rows[2].ratio), Some(1.29));
        assert_eq!(f(rows[2].proxy_cpu_vs_zmq_proxy), Some(0.4));
        assert_eq!(f(rows[3].proxy_cpu_vs_zmq_proxy), Some(0.6));
        assert_eq!(rows[3].ratio, None, "no libzmq lvc row");
        assert_eq!(rows[0].vs_direct, None);
        // Direct rows compare the stacks: zeromq direct against libzmq direct.
        assert_eq!(f(rows[4].ratio), Some(5.0));
        let view = proxy_table(&rows);
        let lines: Vec<&str> = view.lines().collect();
        assert!(lines[0].starts_with("mode"));
        // The lossless libzmq-peers block first, direct row on top.
        assert!(lines[1].contains("libzmq direct"), "{view}");
        assert!(lines[2].contains("libzmq -> zmq_proxy -> libzmq"), "{view}");
        assert!(lines[3].contains("zpatterns proxy") && lines[3].contains("0.90x"));
        assert!(lines[4].contains("zpatterns lvc") && lines[4].contains("0.60"));
        assert!(lines.last().unwrap().starts_with("lossy"));
        assert_eq!(proxy_table(&rows[..1]), "");
    }

    #[test]
    fn old_json_without_the_new_fields_still_reads() {
        let old = r#"[{"impl":"zeromq","pattern":"proxy","size":16,"msgs_per_s":1.0,
            "mb_per_s":0.0,"sent":1,"received":1,"delivered_pct":100.0,"elapsed_s":1.0,
            "p50_us":null,"p99_us":null,"p999_us":null,"cpu_send_pct":null,
            "cpu_recv_pct":null,"cpu_proxy_pct":null,"other_cpu_pct":null,
            "cpu_send_us":null,"cpu_recv_us":null,"cpu_proxy_us":null,"captured":null,
            "capture_drops":null,"proxy_drops":null,"ratio":null,"runs":[],"status":"ok"}]"#;
        let rows: Vec<Row> = serde_json::from_str(old).unwrap();
        assert_eq!((rows[0].peers.as_str(), rows[0].mode.as_str()), ("", ""));
    }

    #[test]
    fn json_has_the_documented_keys() {
        let j = json(&[row("zeromq", "pushpull", 256, 1e6)]);
        let v: serde_json::Value = serde_json::from_str(&j).unwrap();
        let r = &v[0];
        for k in [
            "impl",
            "peers",
            "mode",
            "vs_direct",
            "cpu_proxy_us",
            "pattern",
            "size",
            "msgs_per_s",
            "mb_per_s",
            "status",
        ] {
            assert!(r.get(k).is_some(), "missing {k}");
        }
        assert_eq!(r["impl"], "zeromq");
        let back: Vec<Row> = serde_json::from_str(&j).unwrap();
        assert_eq!(back[0].mb_per_s, 256.0);
    }

    #[test]
    fn sizes_and_rates_read_well() {
        assert_eq!(fmt_size(16), "16 B");
        assert_eq!(fmt_size(4096), "4 KiB");
        assert_eq!(fmt_size(65536), "64 KiB");
        assert_eq!(fmt_size(1000), "1000 B");
        assert_eq!(fmt_rate(2_345_678.0), "2.35M");
        assert_eq!(fmt_rate(12_345.0), "12.3k");
        assert_eq!(fmt_rate(950.0), "950");
    }
}
