//! Results: the row type (also the JSON schema of `--out`), the median of
//! repeated runs, the zeromq/libzmq ratio, the aligned table and the SVG
//! chart. Pure: no processes, no clock, no files (so the integration test
//! `tests/throughput_cli.rs` compiles this file and runs its tests).

use std::collections::BTreeMap;
use std::fmt::Write as _;

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

/// Axis labels for powers of ten: `1`, `10`, `100`, `1k` ... `10M`.
fn fmt_decade(exp: f64) -> String {
    let e = exp.round() as i32;
    let (unit, base) = match e {
        e if e >= 6 => ("M", 6),
        e if e >= 3 => ("k", 3),
        _ => ("", 0),
    };
    format!("{}{unit}", 10u64.pow((e - base).max(0) as u32))
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

const PANEL_W: f64 = 420.0;
const PANEL_H: f64 = 230.0;
const COLOURS: [(&str, &str); 2] = [("zeromq", "#d95f02"), ("libzmq", "#1b9e77")];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A grouped bar chart of msgs/s (log scale): one panel per pattern, one
/// group per size, one bar per implementation. Hand-written SVG with
/// generic font families, so it renders anywhere without installed fonts.
pub(crate) fn svg(rows: &[Row], title: &str) -> String {
    let ok: Vec<&Row> = rows
        .iter()
        .filter(|r| r.ok() && r.msgs_per_s > 0.0)
        .collect();
    let mut patterns: Vec<&str> = Vec::new();
    for r in &ok {
        if !patterns.contains(&r.pattern.as_str()) {
            patterns.push(&r.pattern);
        }
    }
    let (lo, hi) = ok.iter().fold((f64::MAX, 1.0f64), |(lo, hi), r| {
        (lo.min(r.msgs_per_s), hi.max(r.msgs_per_s))
    });
    let lo_exp = lo.min(hi).log10().floor().max(0.0);
    let hi_exp = hi.log10().ceil().max(lo_exp + 1.0);
    let cols = 2usize;
    let rows_n = patterns.len().div_ceil(cols).max(1);
    let (w, h) = (PANEL_W * cols as f64 + 20.0, PANEL_H * rows_n as f64 + 70.0);
    let mut s = String::new();
    let _ = write!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="11">
<rect width="100%" height="100%" fill="white"/>
<text x="10" y="22" font-size="15" font-weight="bold">{}</text>
"##,
        esc(title)
    );
    for (i, (name, colour)) in COLOURS.iter().enumerate() {
        let x = 10.0 + i as f64 * 90.0;
        let _ = writeln!(
            s,
            r##"<rect x="{x}" y="34" width="12" height="12" fill="{colour}"/><text x="{}" y="44">{name}</text>"##,
            x + 16.0
        );
    }
    for (pi, pattern) in patterns.iter().enumerate() {
        let ox = 10.0 + (pi % cols) as f64 * PANEL_W;
        let oy = 60.0 + (pi / cols) as f64 * PANEL_H;
        let these: Vec<&&Row> = ok.iter().filter(|r| r.pattern == *pattern).collect();
        panel(&mut s, pattern, &these, ox, oy, lo_exp, hi_exp);
    }
    s.push_str("</svg>\n");
    s
}

fn panel(s: &mut String, pattern: &str, rows: &[&&Row], ox: f64, oy: f64, lo: f64, hi: f64) {
    let (left, top, pw, ph) = (ox + 50.0, oy + 20.0, PANEL_W - 70.0, PANEL_H - 60.0);
    let y_of = |v: f64| top + ph - (v.log10() - lo) / (hi - lo) * ph;
    let unit = if pattern.ends_with("latency") {
        "round trips/s"
    } else {
        "msgs/s"
    };
    let _ = writeln!(
        s,
        r##"<text x="{left}" y="{}" font-weight="bold">{} ({unit})</text>"##,
        oy + 12.0,
        esc(pattern)
    );
    let mut e = lo;
    while e <= hi {
        let y = y_of(10f64.powf(e));
        let _ = writeln!(
            s,
            r##"<line x1="{left}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end" fill="#555">{}</text>"##,
            left + pw,
            left - 4.0,
            y + 4.0,
            fmt_decade(e)
        );
        e += 1.0;
    }
    let mut sizes: Vec<usize> = rows.iter().map(|r| r.size).collect();
    sizes.sort_unstable();
    sizes.dedup();
    let group_w = pw / sizes.len().max(1) as f64;
    let bar_w = (group_w * 0.8 / COLOURS.len() as f64).min(40.0);
    for (gi, size) in sizes.iter().enumerate() {
        let gx = left + gi as f64 * group_w + group_w * 0.1;
        for (bi, (imp, colour)) in COLOURS.iter().enumerate() {
            let Some(r) = rows.iter().find(|r| r.size == *size && r.imp == *imp) else {
                continue;
            };
            let (x, y) = (
                gx + bi as f64 * bar_w,
                y_of(r.msgs_per_s.max(10f64.powf(lo))),
            );
            let _ = writeln!(
                s,
                r##"<rect x="{x:.1}" y="{y:.1}" width="{:.1}" height="{:.1}" fill="{colour}"><title>{imp} {pattern} {}: {} msgs/s</title></rect><text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="9">{}</text>"##,
                bar_w - 2.0,
                top + ph - y,
                fmt_size(*size),
                fmt_rate(r.msgs_per_s),
                x + bar_w / 2.0 - 1.0,
                y - 3.0,
                fmt_rate(r.msgs_per_s)
            );
        }
        let _ = writeln!(
            s,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            gx + bar_w * COLOURS.len() as f64 / 2.0,
            top + ph + 16.0,
            fmt_size(*size)
        );
    }
    let _ = writeln!(
        s,
        r##"<line x1="{left}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#333"/>"##,
        top + ph,
        left + pw,
        top + ph
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(imp: &str, pattern: &str, size: usize, rate: f64) -> Row {
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
    fn svg_has_a_bar_per_row_and_escapes_text() {
        let rows = [
            row("zeromq", "pubsub", 16, 2e6),
            row("libzmq", "pubsub", 16, 7e5),
            row("zeromq", "lvc", 4096, 1e5),
        ];
        let s = svg(&rows, "a < b & c");
        assert!(s.starts_with("<svg") && s.trim_end().ends_with("</svg>"));
        assert_eq!(s.matches("<title>").count(), 3);
        assert!(s.contains("a &lt; b &amp; c"));
        assert!(!s.contains("NaN") && !s.contains("inf"));
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
        assert_eq!(fmt_decade(0.0), "1");
        assert_eq!(fmt_decade(4.0), "10k");
        assert_eq!(fmt_decade(6.0), "1M");
    }
}
