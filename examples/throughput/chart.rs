//! The `--plot` chart: msgs/s per pattern and size as grouped bars on a
//! log scale, one panel per pattern, in hand-written SVG (generic font
//! families, so it renders anywhere without installed fonts). Pure.

use std::fmt::Write as _;

use crate::report::{fmt_rate, fmt_size, Row};

const PANEL_W: f64 = 420.0;
const PANEL_H: f64 = 230.0;
/// The bars of a size group: label in the legend, colour.
const SERIES: [(&str, &str); 3] = [
    ("direct, no proxy (the ceiling)", "#999999"),
    ("libzmq (stack or proxy)", "#1b9e77"),
    ("zeromq crate / zpatterns proxy", "#d95f02"),
];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// One panel: a title and its bars as (size, series, row).
struct Panel<'a> {
    title: String,
    bars: Vec<(usize, usize, &'a Row)>,
}

/// Panels in first-appearance order: one per proxied pattern, peers and
/// mode (bars: the direct row of those peers, libzmq's proxy, ours), and
/// one per other pattern and mode (bars: the two stacks).
fn panels<'a>(ok: &[&'a Row]) -> Vec<Panel<'a>> {
    let mut out: Vec<Panel<'a>> = Vec::new();
    let series = |imp: &str| if imp == "libzmq" { 1 } else { 2 };
    for r in ok {
        let title = if r.proxied() {
            format!("{} between {} peers, {}", r.pattern, r.peers, r.mode)
        } else {
            format!("{}, {}", r.pattern, r.mode)
        };
        let i = match out.iter().position(|p| p.title == title) {
            Some(i) => i,
            None => {
                out.push(Panel {
                    title,
                    bars: Vec::new(),
                });
                out.len() - 1
            }
        };
        out[i].bars.push((r.size, series(&r.imp), r));
        if r.proxied() {
            let direct = ok.iter().find(|d| {
                d.pattern == "pubsub"
                    && d.mode == r.mode
                    && d.peers == r.peers
                    && d.imp == r.peers
                    && d.size == r.size
            });
            if let Some(d) = direct {
                if !out[i].bars.iter().any(|b| b.0 == r.size && b.1 == 0) {
                    out[i].bars.push((r.size, 0, d));
                }
            }
        }
    }
    out
}

/// A grouped bar chart of msgs/s (log scale): one panel per pattern (per
/// peers for the proxies), one group per size, one bar per implementation
/// (and for the proxies the direct ceiling). Hand-written SVG with generic
/// font families, so it renders anywhere without installed fonts.
pub(crate) fn svg(rows: &[Row], title: &str) -> String {
    let ok: Vec<&Row> = rows
        .iter()
        .filter(|r| r.ok() && r.msgs_per_s > 0.0)
        .collect();
    let panels = panels(&ok);
    let (lo, hi) = ok.iter().fold((f64::MAX, 1.0f64), |(lo, hi), r| {
        (lo.min(r.msgs_per_s), hi.max(r.msgs_per_s))
    });
    let lo_exp = lo.min(hi).log10().floor().max(0.0);
    let hi_exp = hi.log10().ceil().max(lo_exp + 1.0);
    let cols = 2usize;
    let rows_n = panels.len().div_ceil(cols).max(1);
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
    for (i, (name, colour)) in SERIES.iter().enumerate() {
        let x = 10.0 + i as f64 * 230.0;
        let _ = writeln!(
            s,
            r##"<rect x="{x}" y="34" width="12" height="12" fill="{colour}"/><text x="{}" y="44">{}</text>"##,
            x + 16.0,
            esc(name)
        );
    }
    for (pi, p) in panels.iter().enumerate() {
        let ox = 10.0 + (pi % cols) as f64 * PANEL_W;
        let oy = 60.0 + (pi / cols) as f64 * PANEL_H;
        panel(&mut s, p, ox, oy, lo_exp, hi_exp);
    }
    s.push_str("</svg>\n");
    s
}

fn panel(s: &mut String, p: &Panel<'_>, ox: f64, oy: f64, lo: f64, hi: f64) {
    let (left, top, pw, ph) = (ox + 50.0, oy + 20.0, PANEL_W - 70.0, PANEL_H - 60.0);
    let y_of = |v: f64| top + ph - (v.log10() - lo) / (hi - lo) * ph;
    let unit = if p.title.contains("latency") {
        "round trips/s"
    } else {
        "msgs/s"
    };
    let _ = writeln!(
        s,
        r##"<text x="{left}" y="{}" font-weight="bold">{} ({unit})</text>"##,
        oy + 12.0,
        esc(&p.title)
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
    let mut sizes: Vec<usize> = p.bars.iter().map(|b| b.0).collect();
    sizes.sort_unstable();
    sizes.dedup();
    let mut used: Vec<usize> = p.bars.iter().map(|b| b.1).collect();
    used.sort_unstable();
    used.dedup();
    let group_w = pw / sizes.len().max(1) as f64;
    let bar_w = (group_w * 0.8 / used.len().max(1) as f64).min(40.0);
    for (gi, size) in sizes.iter().enumerate() {
        let gx = left + gi as f64 * group_w + group_w * 0.1;
        for (bi, series) in used.iter().enumerate() {
            let Some((_, _, r)) = p.bars.iter().find(|b| b.0 == *size && b.1 == *series) else {
                continue;
            };
            let colour = SERIES[*series].1;
            let (x, y) = (
                gx + bi as f64 * bar_w,
                y_of(r.msgs_per_s.max(10f64.powf(lo))),
            );
            let what = crate::report::path_name(&r.peers, &r.imp, &r.pattern, r.proxied());
            let _ = writeln!(
                s,
                r##"<rect x="{x:.1}" y="{y:.1}" width="{:.1}" height="{:.1}" fill="{colour}"><title>{} {} {}: {} msgs/s</title></rect><text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="9">{}</text>"##,
                bar_w - 2.0,
                top + ph - y,
                esc(&what),
                fmt_size(*size),
                r.mode,
                fmt_rate(r.msgs_per_s),
                x + bar_w / 2.0 - 1.0,
                y - 3.0,
                fmt_rate(r.msgs_per_s)
            );
        }
        let _ = writeln!(
            s,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            gx + bar_w * used.len() as f64 / 2.0,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::tests::row;

    #[test]
    fn svg_has_a_bar_per_row_and_escapes_text() {
        let rows = [
            row("zeromq", "pubsub", 16, 2e6),
            row("libzmq", "pubsub", 16, 7e5),
            row("zeromq", "lvc", 4096, 1e5),
        ];
        let s = svg(&rows, "a < b & c");
        assert!(s.starts_with("<svg") && s.trim_end().ends_with("</svg>"));
        // lvc has no direct zeromq row at 4 KiB here: no ceiling bar.
        assert_eq!(s.matches("<title>").count(), 3);
        assert!(s.contains("a &lt; b &amp; c"));
        assert!(!s.contains("NaN") && !s.contains("inf"));
    }

    #[test]
    fn proxy_panels_carry_the_direct_ceiling() {
        let rows = [
            row("libzmq", "pubsub", 16, 1e6),
            row("libzmq", "proxy", 16, 7e5),
            Row {
                peers: "libzmq".into(),
                ..row("zeromq", "proxy", 16, 9e5)
            },
        ];
        let s = svg(&rows, "t");
        // pubsub: 1 bar; proxy between libzmq peers: both proxies + direct.
        assert_eq!(s.matches("<title>").count(), 4);
        assert!(s.contains("proxy between libzmq peers, lossless"));
        assert!(s.contains("libzmq -&gt; zpatterns proxy -&gt; libzmq"));
    }

    #[test]
    fn decades_read_well() {
        assert_eq!(fmt_decade(0.0), "1");
        assert_eq!(fmt_decade(4.0), "10k");
        assert_eq!(fmt_decade(6.0), "1M");
    }
}
