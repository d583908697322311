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
    /// `zeromq` or `libzmq`.
    #[serde(rename = "impl")]
    pub(crate) imp: String,
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
    /// Capture events the Espresso listener received.
    pub(crate) captured: Option<u64>,
    /// Capture events dropped because the listener was behind.
    pub(crate) capture_drops: Option<u64>,
    /// Messages our proxy dropped for a subscriber whose queue was full.
    pub(crate) proxy_drops: Option<u64>,
    /// msgs_per_s of zeromq / libzmq for this pattern and size (on zeromq rows).
    pub(crate) ratio: Option<f64>,
    /// msgs_per_s of every run, in run order (the row shows the median run).
    pub(crate) runs: Vec<f64>,
    /// `ok`, or what went wrong.
    pub(crate) status: String,
}

impl Row {
    pub(crate) fn ok(&self) -> bool {
        self.status == "ok"
    }

    fn key(&self) -> (String, String, usize) {
        (self.pattern.clone(), self.imp.clone(), self.size)
    }
}

/// Groups repeated runs of a case (same impl, pattern, size), keeps the run
/// with the median msgs/s (the lower middle for even counts; failed runs
/// only if no run succeeded) and records every run's msgs/s. Order: first
/// appearance.
pub(crate) fn aggregate(rows: &[Row]) -> Vec<Row> {
    let mut order = Vec::new();
    let mut groups: BTreeMap<(String, String, usize), Vec<&Row>> = BTreeMap::new();
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

/// Sets `ratio` on every zeromq row that has a libzmq twin.
pub(crate) fn add_ratios(rows: &mut [Row]) {
    let libzmq: BTreeMap<(String, usize), f64> = rows
        .iter()
        .filter(|r| r.imp == "libzmq" && r.ok() && r.msgs_per_s > 0.0)
        .map(|r| ((r.pattern.clone(), r.size), r.msgs_per_s))
        .collect();
    for r in rows.iter_mut().filter(|r| r.imp == "zeromq" && r.ok()) {
        r.ratio = libzmq
            .get(&(r.pattern.clone(), r.size))
            .map(|l| r.msgs_per_s / l);
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

fn cpu(r: &Row) -> String {
    let p = |x: Option<f64>| opt(x, |v| format!("{v:.0}"));
    format!(
        "{}/{}/{}",
        p(r.cpu_send_pct),
        p(r.cpu_proxy_pct),
        p(r.cpu_recv_pct)
    )
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

const HEADERS: [&str; 13] = [
    "impl",
    "pattern",
    "size",
    "msgs/s",
    "MB/s",
    "deliv%",
    "p50us",
    "p99us",
    "p999us",
    "cpu% s/p/r",
    "other%",
    "ratio",
    "notes",
];

/// The aligned text table (text columns left, numbers right).
pub(crate) fn table(rows: &[Row]) -> String {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let us = |x: Option<f64>| opt(x, |v| format!("{v:.1}"));
            vec![
                r.imp.clone(),
                r.pattern.clone(),
                fmt_size(r.size),
                if r.ok() {
                    fmt_rate(r.msgs_per_s)
                } else {
                    "FAILED".into()
                },
                format!("{:.1}", r.mb_per_s),
                opt(r.delivered_pct, |v| format!("{v:.1}")),
                us(r.p50_us),
                us(r.p99_us),
                us(r.p999_us),
                cpu(r),
                opt(r.other_cpu_pct, |v| format!("{v:.0}")),
                opt(r.ratio, |v| format!("{v:.2}")),
                notes(r),
            ]
        })
        .collect();
    let mut width: Vec<usize> = HEADERS.iter().map(|h| h.len()).collect();
    for row in &cells {
        for (w, c) in width.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let left = |i: usize| i < 2 || i == HEADERS.len() - 1;
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
    let headers: Vec<String> = HEADERS.iter().map(|h| h.to_string()).collect();
    let mut out = line(&headers);
    out.push('\n');
    for row in &cells {
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
        assert!(lines[0].starts_with("impl"));
        // Right-aligned numbers end in the same column.
        let end = |l: &str, needle: &str| l.find(needle).unwrap() + needle.len();
        assert_eq!(end(lines[0], "msgs/s"), end(lines[1], "2.50M"));
        assert_eq!(end(lines[1], "2.50M"), end(lines[2], "9.9k"));
        assert!(lines[2].contains("64 KiB") && lines[2].contains("101.2"));
    }

    #[test]
    fn json_has_the_documented_keys() {
        let j = json(&[row("zeromq", "pushpull", 256, 1e6)]);
        let v: serde_json::Value = serde_json::from_str(&j).unwrap();
        let r = &v[0];
        for k in [
            "impl",
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
