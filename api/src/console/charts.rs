//! Charts drawn on the server as SVG with plotters' SVG backend: no JavaScript, no fonts to
//! load (the text is SVG text), readable offline and in print.

use plotters::prelude::*;

const SIZE: (u32, u32) = (760, 300);
/// Dark, distinguishable colours with enough contrast on white.
const COLOURS: [RGBColor; 4] = [RGBColor(0, 84, 147), RGBColor(196, 69, 0), RGBColor(0, 122, 61), RGBColor(110, 50, 150)];

/// An accessible wrapper: the SVG with a title for screen readers.
fn titled(svg: String, title: &str) -> String {
    let escaped = title.replace('&', "&amp;").replace('<', "&lt;");
    svg.replacen("<svg ", &format!("<svg role=\"img\" aria-label=\"{escaped}\" "), 1)
}

/// A tick label: whole numbers bare, small ones with a decimal.
fn tick(v: &f64) -> String {
    if v.fract().abs() < 1e-9 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn upper(series: &[(&str, Vec<f64>)]) -> f64 {
    let max = series.iter().flat_map(|(_, v)| v.iter().copied()).fold(0.0f64, f64::max);
    if max <= 0.0 {
        1.0
    } else {
        max * 1.1
    }
}

/// Lines over the months in `labels`, one per series.
pub fn lines(title: &str, labels: &[String], series: &[(&str, Vec<f64>)]) -> String {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        let _ = root.fill(&WHITE);
        let n = labels.len().max(1);
        let chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(70)
            .build_cartesian_2d(0usize..n, 0f64..upper(series));
        let Ok(mut chart) = chart else { return String::new() };
        let _ = chart
            .configure_mesh()
            .x_labels(n.min(12))
            .x_label_formatter(&|i| labels.get(*i).cloned().unwrap_or_default())
            .y_label_formatter(&tick)
            .light_line_style(RGBColor(235, 235, 235))
            .draw();
        for (k, (name, values)) in series.iter().enumerate() {
            let colour = COLOURS[k % COLOURS.len()];
            if let Ok(drawn) = chart.draw_series(LineSeries::new(values.iter().enumerate().map(|(i, v)| (i, *v)), colour.stroke_width(2))) {
                drawn.label(*name).legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], colour.stroke_width(2)));
            }
            // Each month's value as a dot too, so that a single month shows.
            let _ = chart.draw_series(values.iter().enumerate().map(|(i, v)| Circle::new((i, *v), 3, colour.filled())));
        }
        let _ = chart.configure_series_labels().background_style(WHITE.mix(0.9)).border_style(BLACK).draw();
        let _ = root.present();
    }
    titled(svg, title)
}

/// Grouped bars over the months in `labels`, one bar per series in each month.
pub fn bars(title: &str, labels: &[String], series: &[(&str, Vec<f64>)]) -> String {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        let _ = root.fill(&WHITE);
        let n = labels.len().max(1);
        let groups = series.len().max(1) as u32;
        let width = 100u32;
        let chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(50)
            .build_cartesian_2d(0u32..(n as u32 * width), 0f64..upper(series));
        let Ok(mut chart) = chart else { return String::new() };
        let _ = chart
            .configure_mesh()
            .x_labels(n.min(12))
            .x_label_formatter(&|x| labels.get((*x / width) as usize).cloned().unwrap_or_default())
            .y_label_formatter(&tick)
            .light_line_style(RGBColor(235, 235, 235))
            .draw();
        let bar = (width - 20) / groups;
        for (k, (name, values)) in series.iter().enumerate() {
            let colour = COLOURS[k % COLOURS.len()];
            let left = 10 + k as u32 * bar;
            let rectangles = values.iter().enumerate().map(move |(i, v)| {
                let x = i as u32 * width + left;
                Rectangle::new([(x, 0.0), (x + bar - 2, *v)], colour.filled())
            });
            if let Ok(drawn) = chart.draw_series(rectangles) {
                drawn.label(*name).legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], colour.filled()));
            }
        }
        let _ = chart.configure_series_labels().background_style(WHITE.mix(0.9)).border_style(BLACK).draw();
        let _ = root.present();
    }
    titled(svg, title)
}

/// A deferred-revenue waterfall over the months in `labels`: each month starts at its deferred
/// balance, rises by what was billed and falls by what was recognized; the dots are the balance
/// at each month's end.
pub fn waterfall(title: &str, labels: &[String], opening: &[f64], billed: &[f64], recognized: &[f64]) -> String {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        let _ = root.fill(&WHITE);
        let n = labels.len().max(1);
        let width = 100u32;
        let mut low = 0f64;
        let mut high = 0f64;
        for i in 0..labels.len() {
            let top = opening[i] + billed[i];
            for v in [opening[i], top, top - recognized[i]] {
                low = low.min(v);
                high = high.max(v);
            }
        }
        let span = (high - low).max(1.0);
        let chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(70)
            .build_cartesian_2d(0u32..(n as u32 * width), (low - span * 0.05)..(high + span * 0.1));
        let Ok(mut chart) = chart else { return String::new() };
        let _ = chart
            .configure_mesh()
            .x_labels(n.min(12))
            .x_label_formatter(&|x| labels.get((*x / width) as usize).cloned().unwrap_or_default())
            .y_label_formatter(&tick)
            .light_line_style(RGBColor(235, 235, 235))
            .draw();
        let (up, down, balance) = (COLOURS[0], COLOURS[1], COLOURS[2]);
        let rises = (0..labels.len()).map(|i| {
            let x = i as u32 * width;
            Rectangle::new([(x + 10, opening[i]), (x + 48, opening[i] + billed[i])], up.filled())
        });
        if let Ok(drawn) = chart.draw_series(rises) {
            drawn.label("billed").legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], up.filled()));
        }
        let falls = (0..labels.len()).map(|i| {
            let x = i as u32 * width;
            let top = opening[i] + billed[i];
            Rectangle::new([(x + 52, top), (x + 90, top - recognized[i])], down.filled())
        });
        if let Ok(drawn) = chart.draw_series(falls) {
            drawn.label("recognized").legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], down.filled()));
        }
        let closing =
            (0..labels.len()).map(|i| Circle::new((i as u32 * width + 50, opening[i] + billed[i] - recognized[i]), 4, balance.filled()));
        if let Ok(drawn) = chart.draw_series(closing) {
            drawn.label("deferred at month end").legend(move |(x, y)| Circle::new((x + 6, y), 4, balance.filled()));
        }
        let _ = chart.configure_series_labels().background_style(WHITE.mix(0.9)).border_style(BLACK).draw();
        let _ = root.present();
    }
    titled(svg, title)
}
