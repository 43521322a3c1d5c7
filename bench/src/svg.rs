//! A grouped bar chart as a standalone SVG string (no plotting dependency).
//!
//! Each group (one scenario) is scaled to its own largest value, since scenarios differ by
//! orders of magnitude; every bar is labelled with its value.

use std::fmt::Write;

/// Colours of the series, in order.
const COLOURS: [&str; 4] = ["#1b9e77", "#7570b3", "#d95f02", "#e7298a"];

/// Renders `groups` (label, one value per series; `None` = no data) as grouped bars.
pub(crate) fn bar_chart(
    title: &str,
    unit: &str,
    series: &[&str],
    groups: &[(String, Vec<Option<f64>>)],
) -> String {
    let bar_w = 28.0;
    let group_w = bar_w * series.len() as f64 + 40.0;
    let left = 20.0;
    let top = 60.0;
    let plot_h = 220.0;
    let width = left * 2.0 + group_w * groups.len().max(1) as f64;
    let height = top + plot_h + 110.0;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">"#
    );
    let _ = write!(
        s,
        r##"<rect width="100%" height="100%" fill="white"/><text x="{left}" y="22" font-size="15" font-weight="bold">{}</text><text x="{left}" y="40" fill="#555">{} (each scenario scaled to its largest bar)</text>"##,
        escape(title),
        escape(unit)
    );
    for (i, name) in series.iter().enumerate() {
        let x = width - 110.0;
        let y = 14.0 + 14.0 * i as f64;
        let _ = write!(
            s,
            r#"<rect x="{x}" y="{}" width="10" height="10" fill="{}"/><text x="{}" y="{}">{}</text>"#,
            y - 9.0,
            COLOURS[i % COLOURS.len()],
            x + 14.0,
            y,
            escape(name)
        );
    }
    let base = top + plot_h;
    let _ = write!(
        s,
        r##"<line x1="{left}" y1="{base}" x2="{}" y2="{base}" stroke="#333"/>"##,
        width - left
    );
    for (g, (label, values)) in groups.iter().enumerate() {
        let gx = left + 20.0 + group_w * g as f64;
        let max = values.iter().flatten().cloned().fold(0.0f64, f64::max);
        for (i, v) in values.iter().enumerate() {
            let x = gx + bar_w * i as f64;
            match v {
                Some(v) if max > 0.0 => {
                    let h = (v / max * plot_h).max(1.0);
                    let _ = write!(
                        s,
                        r#"<rect x="{x}" y="{}" width="{}" height="{h}" fill="{}"/><text x="{}" y="{}" font-size="9" text-anchor="middle" transform="rotate(-60 {} {})">{}</text>"#,
                        base - h,
                        bar_w - 4.0,
                        COLOURS[i % COLOURS.len()],
                        x + bar_w / 2.0,
                        base - h - 4.0,
                        x + bar_w / 2.0,
                        base - h - 4.0,
                        human(*v)
                    );
                }
                _ => {
                    let _ = write!(
                        s,
                        r##"<text x="{}" y="{}" font-size="9" text-anchor="middle" fill="#999">n/a</text>"##,
                        x + bar_w / 2.0,
                        base - 4.0
                    );
                }
            }
        }
        let _ = write!(
            s,
            r#"<text x="{}" y="{}" text-anchor="end" transform="rotate(-30 {} {})">{}</text>"#,
            gx + group_w / 2.0,
            base + 16.0,
            gx + group_w / 2.0,
            base + 16.0,
            escape(label)
        );
    }
    s.push_str("</svg>\n");
    s
}

/// A short human form: 1234567 -> "1.23M".
pub(crate) fn human(v: f64) -> String {
    let a = v.abs();
    if a >= 1e9 {
        format!("{:.3}G", v / 1e9)
    } else if a >= 1e6 {
        format!("{:.3}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.1}k", v / 1e3)
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_bars_and_missing_values() {
        let svg = bar_chart(
            "t",
            "msg/s",
            &["a", "b"],
            &[("g<1>".into(), vec![Some(2.0), None])],
        );
        assert!(svg.starts_with("<svg"));
        assert!(svg.contains("g&lt;1&gt;"));
        assert!(svg.contains("n/a"));
        assert_eq!(human(1_234_567.0), "1.235M");
    }
}
