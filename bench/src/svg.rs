//! A small horizontal bar chart in plain SVG: one bar per VMM at the median, a whisker from
//! min to max, the median printed after the bar, and a linear axis starting at zero.

use std::fmt::Write as _;

/// One bar of a chart.
#[derive(Debug, Clone, PartialEq)]
pub struct Bar {
    /// Label left of the bar (the VMM).
    pub label: String,
    /// Bar length.
    pub median: f64,
    /// Whisker start.
    pub min: f64,
    /// Whisker end.
    pub max: f64,
}

const WIDTH: f64 = 720.0;
const LEFT: f64 = 150.0;
const RIGHT: f64 = 110.0;
const TOP: f64 = 56.0;
const ROW: f64 = 36.0;
const BAR: f64 = 20.0;
const BOTTOM: f64 = 44.0;
const COLORS: [&str; 4] = ["#d9534f", "#4a7ebb", "#5cb85c", "#9b59b6"];

/// Escapes text for SVG character data and attribute values.
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A "nice" tick step (1, 2 or 5 times a power of ten) giving about five ticks up to `max`.
pub fn tick_step(max: f64) -> f64 {
    if !max.is_finite() || max <= 0.0 {
        return 1.0;
    }
    let raw = max / 5.0;
    let pow = 10f64.powf(raw.log10().floor());
    let frac = raw / pow;
    let nice = if frac <= 1.0 {
        1.0
    } else if frac <= 2.0 {
        2.0
    } else if frac <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * pow
}

/// Formats a value with about three significant digits.
pub fn format_value(v: f64) -> String {
    let a = v.abs();
    if a >= 100.0 || a == 0.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// A tick value with as many decimals as the step needs (`50`, `2.5`, `0.02`).
pub fn tick_label(v: f64, step: f64) -> String {
    let decimals = if step >= 1.0 {
        0
    } else {
        (-step.log10().floor()) as usize
    };
    format!("{v:.decimals$}")
}

/// Renders the chart: `title` on top, `unit` under the axis.
pub fn bar_chart(title: &str, unit: &str, bars: &[Bar]) -> String {
    let height = TOP + ROW * bars.len().max(1) as f64 + BOTTOM;
    let top_value = bars.iter().map(|b| b.max.max(b.median)).fold(0.0, f64::max);
    let step = tick_step(top_value);
    let axis_max = (top_value / step).ceil().max(1.0) * step;
    let plot = WIDTH - LEFT - RIGHT;
    let x = |v: f64| LEFT + (v.max(0.0) / axis_max) * plot;
    let axis_y = TOP + ROW * bars.len().max(1) as f64;

    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="13">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="24" font-size="15" font-weight="bold" text-anchor="middle">{}</text>"#,
        WIDTH / 2.0,
        escape(title)
    );
    let _ = writeln!(
        s,
        r##"<text x="{}" y="42" font-size="11" fill="#555" text-anchor="middle">bar: median, whisker: min to max</text>"##,
        WIDTH / 2.0
    );
    // Grid and ticks.
    let mut t = 0.0;
    while t <= axis_max + step / 2.0 {
        let tx = x(t);
        let _ = writeln!(
            s,
            r##"<line x1="{tx:.1}" y1="{TOP}" x2="{tx:.1}" y2="{axis_y}" stroke="#e4e4e4"/><text x="{tx:.1}" y="{:.1}" text-anchor="middle" fill="#333">{}</text>"##,
            axis_y + 16.0,
            tick_label(t, step)
        );
        t += step;
    }
    let _ = writeln!(
        s,
        r##"<line x1="{LEFT}" y1="{axis_y}" x2="{:.1}" y2="{axis_y}" stroke="#333"/>"##,
        LEFT + plot
    );
    let _ = writeln!(
        s,
        r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" fill="#333">{}</text>"##,
        LEFT + plot / 2.0,
        axis_y + 34.0,
        escape(unit)
    );
    for (i, b) in bars.iter().enumerate() {
        let y = TOP + ROW * i as f64 + (ROW - BAR) / 2.0;
        let mid = y + BAR / 2.0;
        let color = COLORS[i % COLORS.len()];
        let _ = writeln!(
            s,
            r#"<g class="bar"><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            LEFT - 8.0,
            mid + 4.5,
            escape(&b.label)
        );
        let _ = writeln!(
            s,
            r#"<rect x="{LEFT}" y="{y:.1}" width="{:.1}" height="{BAR}" fill="{color}"/>"#,
            x(b.median) - LEFT
        );
        let (x0, x1) = (x(b.min), x(b.max));
        let _ = writeln!(
            s,
            r##"<path d="M{x0:.1} {mid:.1}H{x1:.1}M{x0:.1} {:.1}V{:.1}M{x1:.1} {:.1}V{:.1}" stroke="#222" stroke-width="1.5" fill="none"/>"##,
            mid - 6.0,
            mid + 6.0,
            mid - 6.0,
            mid + 6.0
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}">{}</text></g>"#,
            x1.max(x(b.median)) + 6.0,
            mid + 4.5,
            escape(&format!("{} {unit}", format_value(b.median)))
        );
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bars() -> Vec<Bar> {
        vec![
            Bar {
                label: "petrel".into(),
                median: 50.0,
                min: 45.0,
                max: 60.0,
            },
            Bar {
                label: "q<&>".into(),
                median: 120.0,
                min: 110.0,
                max: 131.0,
            },
        ]
    }

    #[test]
    fn chart_shape() {
        let svg = bar_chart("guest-life: exit", "ms", &bars());
        assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<g class=\"bar\">").count(), 2);
        assert_eq!(
            svg.matches("<rect ").count(),
            3,
            "background + one rect per bar"
        );
        assert!(svg.contains(">petrel</text>"));
        assert!(svg.contains(">q&lt;&amp;&gt;</text>"), "labels are escaped");
        assert!(svg.contains(">120 ms</text>"));
        // Balanced groups, and no raw '&' outside entities.
        assert_eq!(svg.matches("<g ").count(), svg.matches("</g>").count());
        assert!(!svg
            .replace("&amp;", "")
            .replace("&lt;", "")
            .replace("&gt;", "")
            .contains('&'));
    }

    #[test]
    fn longest_bar_fits_in_plot() {
        let svg = bar_chart("t", "ms", &bars());
        // step 50, so the axis ends at 150; a bar of 120 is 120/150 of the plot width.
        let plot = WIDTH - LEFT - RIGHT;
        let want = format!("width=\"{:.1}\"", 120.0 / 150.0 * plot);
        assert!(svg.contains(&want), "{want} in {svg}");
    }

    #[test]
    fn ticks_and_formatting() {
        assert_eq!(tick_step(131.0), 50.0);
        assert_eq!(tick_step(60.0), 20.0);
        assert_eq!(tick_step(5.0), 1.0);
        assert_eq!(tick_step(0.0), 1.0);
        assert_eq!(format_value(123.456), "123");
        assert_eq!(format_value(12.345), "12.3");
        assert_eq!(format_value(1.2345), "1.23");
        assert_eq!(format_value(0.12345), "0.123");
        assert_eq!(tick_label(50.0, 50.0), "50");
        assert_eq!(tick_label(0.4, 0.2), "0.4");
        assert_eq!(tick_label(0.04, 0.02), "0.04");
    }

    #[test]
    fn empty_chart_is_valid() {
        let svg = bar_chart("t", "ms", &[]);
        assert!(svg.contains("</svg>"));
        assert_eq!(svg.matches("<g class=\"bar\">").count(), 0);
    }
}
