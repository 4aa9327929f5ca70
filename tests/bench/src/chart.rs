//! The README's chart: one PNG, four panels (API budget, latency by source, throughput against
//! nginx, memory), drawn with plotters from the report.

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::{FontStyle, register_font};

use crate::report::Report;

/// Where Debian's fonts-dejavu-core puts the face the chart is lettered in.
const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

const GREY: RGBColor = RGBColor(160, 160, 160);
const BLUE: RGBColor = RGBColor(31, 119, 180);
const ORANGE: RGBColor = RGBColor(255, 127, 14);
const GREEN: RGBColor = RGBColor(44, 160, 44);
const RED: RGBColor = RGBColor(214, 39, 40);

type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;
type DrawResult = Result<(), Box<dyn std::error::Error>>;

/// Draws the chart of `report` to `path` (PNG, 1400 × 1000).
pub fn draw(report: &Report, path: &Path) -> anyhow::Result<()> {
    let font = std::fs::read(FONT).map_err(|e| {
        anyhow::anyhow!(
            "cannot read the chart's font {FONT} ({e}); install Debian's fonts-dejavu-core"
        )
    })?;
    register_font(
        "sans-serif",
        FontStyle::Normal,
        Box::leak(font.into_boxed_slice()),
    )
    .map_err(|_| anyhow::anyhow!("{FONT} is not a font plotters can read"))?;
    draw_panels(report, path).map_err(|e| anyhow::anyhow!("drawing {}: {e}", path.display()))
}

fn draw_panels(report: &Report, path: &Path) -> DrawResult {
    let root = BitMapBackend::new(path, (1400, 1000)).into_drawing_area();
    root.fill(&WHITE)?;
    let title = format!(
        "peercache benchmarks{} — {} cores, stand-in GitHub API with {} ms latency, {} KB bodies",
        if report.quick { " (--quick)" } else { "" },
        report.machine.cpus,
        report.upstream_latency_ms,
        report.body_bytes / 1024
    );
    let root = root.titled(&title, ("sans-serif", 24))?;
    let panels = root.split_evenly((2, 2));
    budget(report, &panels[0])?;
    latency(report, &panels[1])?;
    throughput(report, &panels[2])?;
    memory(report, &panels[3])?;
    root.present()?;
    Ok(())
}

/// A grouped bar chart: `groups` on the x axis, one bar per series in each group.
struct Bars<'a> {
    caption: String,
    y_desc: &'a str,
    groups: Vec<String>,
    /// (name, colour, value per group).
    series: Vec<(String, RGBColor, Vec<f64>)>,
    log_y: bool,
    /// A dashed horizontal target line, with its label.
    target: Option<(f64, String)>,
}

fn draw_bars(area: &Area, bars: Bars) -> DrawResult {
    let groups = bars.groups.len().max(1) as f64;
    let max = bars
        .series
        .iter()
        .flat_map(|(_, _, v)| v.iter().copied())
        .chain(bars.target.iter().map(|(t, _)| *t))
        .fold(0.0_f64, f64::max)
        .max(1.0);
    let mut builder = ChartBuilder::on(area);
    builder
        .caption(&bars.caption, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70);
    let n_series = bars.series.len().max(1) as f64;
    let width = 0.8 / n_series;
    let bar = |g: usize, s: usize| {
        let x0 = g as f64 + 0.1 + s as f64 * width;
        (x0, x0 + width * 0.92)
    };
    macro_rules! body {
        ($chart:expr, $floor:expr) => {{
            let mut chart = $chart;
            // Text is placed in the panel's own pixels; the chart maps to the image's.
            let base = area.get_base_pixel();
            chart
                .configure_mesh()
                .disable_x_mesh()
                .x_labels(0)
                .y_desc(bars.y_desc)
                .light_line_style(WHITE)
                .label_style(("sans-serif", 15))
                .draw()?;
            for (s, (name, colour, values)) in bars.series.iter().enumerate() {
                let colour = *colour;
                chart
                    .draw_series(values.iter().enumerate().filter(|(_, v)| **v > 0.0).map(
                        |(g, v)| {
                            let (x0, x1) = bar(g, s);
                            Rectangle::new([(x0, $floor), (x1, *v)], colour.filled())
                        },
                    ))?
                    .label(name.as_str())
                    .legend(move |(x, y)| {
                        Rectangle::new([(x, y - 6), (x + 14, y + 6)], colour.filled())
                    });
                for (g, v) in values.iter().enumerate().filter(|(_, v)| **v > 0.0) {
                    let (x0, x1) = bar(g, s);
                    let (px, py) = chart.backend_coord(&((x0 + x1) / 2.0, *v));
                    area.draw(&Text::new(
                        short(*v),
                        (px - base.0, py - base.1 - 3),
                        centred(12, VPos::Bottom),
                    ))?;
                }
            }
            if let Some((target, label)) = &bars.target {
                chart
                    .draw_series(DashedLineSeries::new(
                        [(0.0, *target), (groups, *target)],
                        6,
                        4,
                        RED.stroke_width(2),
                    ))?
                    .label(label.as_str())
                    .legend(|(x, y)| PathElement::new([(x, y), (x + 14, y)], RED.stroke_width(2)));
            }
            for (g, name) in bars.groups.iter().enumerate() {
                let (px, py) = chart.backend_coord(&(g as f64 + 0.5, $floor));
                area.draw(&Text::new(
                    name.clone(),
                    (px - base.0, py - base.1 + 8),
                    centred(15, VPos::Top),
                ))?;
            }
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.85))
                .border_style(GREY)
                .label_font(("sans-serif", 14))
                .position(SeriesLabelPosition::UpperLeft)
                .draw()?;
        }};
    }
    if bars.log_y {
        let floor = 0.1;
        let chart = builder.build_cartesian_2d(0.0..groups, (floor..max * 8.0).log_scale())?;
        body!(chart, floor);
    } else {
        // Head room for the legend above the tallest bar.
        let chart = builder.build_cartesian_2d(0.0..groups, 0.0..max * 1.5)?;
        body!(chart, 0.0);
    }
    Ok(())
}

/// A font centred on its anchor, which is at its top or bottom.
fn centred(size: u32, vertical: VPos) -> TextStyle<'static> {
    TextStyle::from(("sans-serif", size).into_font()).pos(Pos::new(HPos::Center, vertical))
}

/// A figure short enough to sit on a bar.
fn short(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.0}k", v / 1000.0)
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn note(area: &Area, caption: &str, text: &str) -> DrawResult {
    area.draw(&Text::new(
        caption.to_string(),
        (20, 20),
        ("sans-serif", 20),
    ))?;
    area.draw(&Text::new(text.to_string(), (20, 60), ("sans-serif", 15)))?;
    Ok(())
}

fn budget(report: &Report, area: &Area) -> DrawResult {
    let runs: Vec<_> = report.budget.iter().filter_map(|r| r.measured()).collect();
    if runs.is_empty() {
        return note(area, "API budget", "not measured");
    }
    let endpoints = runs[0].endpoints;
    draw_bars(
        area,
        Bars {
            caption: format!("GitHub API calls: N jobs × {endpoints} endpoints"),
            y_desc: "calls that reached the API",
            groups: runs.iter().map(|r| format!("N = {}", r.nodes)).collect(),
            series: vec![
                (
                    "each job alone (N × endpoints)".into(),
                    GREY,
                    runs.iter().map(|r| r.without_sharing as f64).collect(),
                ),
                (
                    "peercache, jobs together".into(),
                    BLUE,
                    runs.iter()
                        .map(|r| r.together.upstream_calls as f64)
                        .collect(),
                ),
                (
                    "peercache, jobs staggered".into(),
                    ORANGE,
                    runs.iter()
                        .map(|r| r.staggered.upstream_calls as f64)
                        .collect(),
                ),
                (
                    "after the TTL: paid calls".into(),
                    GREEN,
                    runs.iter()
                        .map(|r| r.revalidation.round.paid_calls as f64)
                        .collect(),
                ),
            ],
            log_y: false,
            target: None,
        },
    )
}

fn latency(report: &Report, area: &Area) -> DrawResult {
    let Some(rows) = report.latency.measured() else {
        return note(
            area,
            "Latency by source",
            &report.latency.reason().unwrap_or_default(),
        );
    };
    let p50 = |f: fn(&crate::latency::Row) -> &Option<crate::stats::Summary>| {
        rows.iter()
            .map(|r| f(r).as_ref().map_or(0.0, |s| s.p50_ms))
            .collect::<Vec<f64>>()
    };
    draw_bars(
        area,
        Bars {
            caption: "Latency by source, p50 (log scale)".into(),
            y_desc: "milliseconds",
            groups: rows.iter().map(|r| r.source.to_string()).collect(),
            series: vec![
                (
                    "`peercache fetch`, no daemon".into(),
                    GREY,
                    p50(|r| &r.fetch_alone),
                ),
                (
                    "`peercache fetch` via the daemon".into(),
                    BLUE,
                    p50(|r| &r.fetch_via_daemon),
                ),
                ("local HTTP API".into(), ORANGE, p50(|r| &r.api)),
            ],
            log_y: true,
            target: Some((
                report.upstream_latency_ms as f64,
                "the stand-in's own latency".into(),
            )),
        },
    )
}

fn throughput(report: &Report, area: &Area) -> DrawResult {
    let Some(t) = report.throughput.measured() else {
        return note(
            area,
            "Throughput on cached hits",
            &report.throughput.reason().unwrap_or_default(),
        );
    };
    draw_bars(
        area,
        Bars {
            caption: format!(
                "Cached hits under wrk ({} connections, best of {}): peercache / nginx = {:.2}",
                t.connections, t.rounds, t.ratio
            ),
            y_desc: "requests per second",
            groups: vec!["requests per second".into()],
            series: vec![
                (
                    "peercache local API".into(),
                    BLUE,
                    vec![t.peercache_api.requests_per_sec],
                ),
                (
                    "nginx, same bodies as static files".into(),
                    GREY,
                    vec![t.nginx_static.requests_per_sec],
                ),
            ],
            log_y: false,
            target: Some((t.nginx_static.requests_per_sec, "target: nginx".into())),
        },
    )
}

fn memory(report: &Report, area: &Area) -> DrawResult {
    let Some(f) = report.footprint.measured() else {
        return note(
            area,
            "Daemon memory",
            &report.footprint.reason().unwrap_or_default(),
        );
    };
    let mut groups = vec!["idle".to_string()];
    let mut values = vec![f.rss_idle_kb as f64 / 1024.0];
    for r in &f.rss_with_peers {
        groups.push(format!("{} peers", r.peers));
        values.push(r.rss_kb as f64 / 1024.0);
    }
    groups.push("after traffic".into());
    values.push(f.rss_after_traffic_kb as f64 / 1024.0);
    draw_bars(
        area,
        Bars {
            caption: format!(
                "Daemon resident memory (static binary {:.1} MB)",
                f.binary_bytes as f64 / 1_000_000.0
            ),
            y_desc: "MB (VmRSS)",
            groups,
            series: vec![("one daemon".into(), BLUE, values)],
            log_y: false,
            target: Some((25.0, "target for idle: 25 MB".into())),
        },
    )
}
