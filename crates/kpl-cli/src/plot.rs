//! `kpl bench --plot FILE.svg|FILE.png`: four charts of a run, drawn with plotters. Throughput
//! (user and Kinesis MiB/s against the shards' capacity), throttled Kinesis entries per second,
//! send-to-ack latency percentiles per second, and each shard's byte utilization by shard id.
//! Every axis starts at zero and says its unit. PNG text is laid out with DejaVu Sans, bundled
//! in the binary, so no system font is needed.

use std::path::{Path, PathBuf};
use std::sync::Once;

use anyhow::Context;
use plotters::coord::Shift;
use plotters::coord::ranged1d::SegmentValue;
use plotters::coord::types::RangedCoordf64;
use plotters::element::DashedPathElement;
use plotters::prelude::*;
use plotters::style::FontStyle;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::bench::Sample;

/// A chart with seconds on x and a measure on y.
type TimeChart<'a, DB> = ChartContext<'a, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// A point in pixels.
type BackendCoord = (i32, i32);

const SIZE: (u32, u32) = (1400, 900);
const FONT: &str = "sans-serif";
const GREY: RGBColor = RGBColor(110, 110, 110);
const STEEL: RGBColor = RGBColor(70, 130, 180);
const ORANGE: RGBColor = RGBColor(230, 140, 20);
const LIGHT_GREEN: RGBColor = RGBColor(120, 200, 120);

/// What the charts show.
pub struct PlotData<'a> {
    /// One line of context above the charts (target, load).
    pub title: String,
    pub samples: &'a [Sample],
    /// Shard id and byte utilization (1.0 = 1 MiB/s for the whole run), in shard order.
    pub shards: Vec<(String, f64)>,
    /// Open shards: the capacity is this many times one shard's.
    pub shard_count: usize,
    /// How long load was offered.
    pub duration_secs: f64,
}

/// The image format, from the file name: `--plot` takes a `.svg` or `.png` path.
pub fn parse_path(s: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(s);
    match extension(&path).as_deref() {
        Some("svg" | "png") => Ok(path),
        _ => Err(format!(
            "{s:?}: name a .svg or .png file (the extension picks the format)"
        )),
    }
}

fn extension(path: &Path) -> Option<String> {
    path.extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase())
}

/// Draws the charts into `path`, SVG or PNG by its extension.
pub fn draw(path: &Path, data: &PlotData<'_>) -> anyhow::Result<()> {
    register_fonts();
    let drawing = |e: String| anyhow::anyhow!("cannot draw the plot: {e}");
    let bytes = match extension(path).as_deref() {
        Some("svg") => {
            let mut svg = String::new();
            {
                let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
                charts(&root, data).map_err(|e| drawing(e.to_string()))?;
                root.present().map_err(|e| drawing(e.to_string()))?;
            }
            svg.into_bytes()
        }
        Some("png") => {
            let (w, h) = SIZE;
            let mut rgb = vec![0u8; w as usize * h as usize * 3];
            {
                let root = BitMapBackend::with_buffer(&mut rgb, SIZE).into_drawing_area();
                charts(&root, data).map_err(|e| drawing(e.to_string()))?;
                root.present().map_err(|e| drawing(e.to_string()))?;
            }
            encode_png(&rgb, SIZE)?
        }
        _ => anyhow::bail!("{}: name a .svg or .png file", path.display()),
    };
    std::fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))
}

fn encode_png(rgb: &[u8], (w, h): (u32, u32)) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, w, h);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().context("cannot encode the PNG")?;
    writer
        .write_image_data(rgb)
        .context("cannot encode the PNG")?;
    writer.finish().context("cannot encode the PNG")?;
    Ok(out)
}

fn register_fonts() {
    static FONTS: Once = Once::new();
    FONTS.call_once(|| {
        // The bundled font is valid TrueType; were it not, text would be missing, not the run.
        let _ = plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular());
        let _ = plotters::style::register_font(FONT, FontStyle::Bold, dejavu::sans::bold());
    });
}

type DrawResult<DB> = Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

fn charts<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, d: &PlotData<'_>) -> DrawResult<DB> {
    root.fill(&WHITE)?;
    let (head, body) = root.split_vertically(40);
    head.draw(&Text::new(
        d.title.clone(),
        (20, 12),
        (FONT, 18).into_font().style(FontStyle::Bold),
    ))?;
    let panels = body.split_evenly((2, 2));
    throughput(&panels[0], d)?;
    throttling(&panels[1], d)?;
    latency(&panels[2], d)?;
    shards(&panels[3], d)?;
    Ok(())
}

/// The time axis: 0 to the last sample (at least the load's duration).
fn seconds(d: &PlotData<'_>) -> f64 {
    let last = d.samples.last().map_or(0.0, |s| s.second as f64);
    last.max(d.duration_secs).max(1.0)
}

/// A top for values up to `max`: room above the highest for the legend, never an empty range.
fn top(max: f64) -> f64 {
    if max > 0.0 { max * 1.4 } else { 5.0 }
}

/// An axis label: `2`, `0.5`, `1.25` (no `2.0`, no float noise).
fn num(v: &f64) -> String {
    let s = format!("{v:.2}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".to_owned()
    } else {
        s.to_owned()
    }
}

fn legend<'a, DB: DrawingBackend + 'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
    position: SeriesLabelPosition,
) -> DrawResult<DB> {
    chart
        .configure_series_labels()
        .position(position)
        .label_font((FONT, 14))
        .background_style(WHITE.mix(0.85))
        .border_style(GREY)
        .draw()
}

fn solid(color: RGBColor) -> impl Fn(BackendCoord) -> PathElement<BackendCoord> {
    move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(2))
}

fn dashed(
    color: RGBColor,
) -> impl Fn(BackendCoord) -> DashedPathElement<std::vec::IntoIter<BackendCoord>, u32> {
    move |(x, y)| DashedPathElement::new(vec![(x, y), (x + 24, y)], 5, 3, color.stroke_width(2))
}

/// The shards' capacity line's legend: "capacity: 4 shards x 1 MiB/s".
fn capacity_label(shards: usize) -> String {
    format!(
        "capacity: {shards} shard{} x 1 MiB/s",
        if shards == 1 { "" } else { "s" }
    )
}

/// A chart of per-second samples: time on x from zero to the run's end, `y_desc` on y from zero
/// to `y_max`; `whole_y` keeps y's ticks on whole numbers (counts) on a small axis.
fn time_chart<'a, DB: DrawingBackend>(
    area: &'a DrawingArea<DB, Shift>,
    caption: &str,
    (x_max, y_max): (f64, f64),
    y_desc: &str,
    whole_y: bool,
) -> Result<TimeChart<'a, DB>, DrawingAreaErrorKind<DB::ErrorType>> {
    let mut chart = ChartBuilder::on(area)
        .caption(caption, (FONT, 18))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(65)
        .build_cartesian_2d(0f64..x_max, 0f64..y_max)?;
    let y_labels = if whole_y && y_max <= 10.0 {
        y_max as usize + 1
    } else {
        10
    };
    chart
        .configure_mesh()
        .x_desc("time since start (s)")
        // Samples are per second: whole-second ticks.
        .x_labels((x_max as usize + 1).min(13))
        .y_desc(y_desc)
        .y_labels(y_labels)
        .x_label_formatter(&num)
        .y_label_formatter(&num)
        .label_style((FONT, 13))
        .axis_desc_style((FONT, 14))
        .draw()?;
    Ok(chart)
}

fn throughput<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    d: &PlotData<'_>,
) -> DrawResult<DB> {
    let x_max = seconds(d);
    let capacity = d.shard_count as f64;
    let y_max = top(d
        .samples
        .iter()
        .map(|s| s.user_mib.max(s.kinesis_mib))
        .fold(capacity, f64::max));
    let mut chart = time_chart(
        area,
        "Throughput per second",
        (x_max, y_max),
        "MiB/s",
        false,
    )?;
    chart
        .draw_series(DashedLineSeries::new(
            [(0.0, capacity), (x_max, capacity)],
            8,
            5,
            GREY.stroke_width(2),
        ))?
        .label(capacity_label(d.shard_count))
        .legend(dashed(GREY));
    chart
        .draw_series(LineSeries::new(
            d.samples.iter().map(|s| (s.second as f64, s.kinesis_mib)),
            // Wide, under the user line: where the two coincide both stay visible.
            LIGHT_GREEN.stroke_width(5),
        ))?
        .label("Kinesis records (what the shards bill)")
        .legend(solid(LIGHT_GREEN));
    chart
        .draw_series(LineSeries::new(
            d.samples.iter().map(|s| (s.second as f64, s.user_mib)),
            BLUE.stroke_width(2),
        ))?
        .label("user records")
        .legend(solid(BLUE));
    legend(&mut chart, SeriesLabelPosition::UpperRight)
}

fn throttling<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    d: &PlotData<'_>,
) -> DrawResult<DB> {
    let x_max = seconds(d);
    let y_max = top(d.samples.iter().map(|s| s.throttled).fold(0.0, f64::max));
    let mut chart = time_chart(
        area,
        "Throttled per second",
        (x_max, y_max),
        "Kinesis entries/s",
        true,
    )?;
    chart
        .draw_series(LineSeries::new(
            d.samples.iter().map(|s| (s.second as f64, s.throttled)),
            RED.stroke_width(2),
        ))?
        .label("throttled Kinesis entries (sent again)")
        .legend(solid(RED));
    legend(&mut chart, SeriesLabelPosition::UpperRight)
}

fn latency<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, d: &PlotData<'_>) -> DrawResult<DB> {
    let x_max = seconds(d);
    let y_max = top(d
        .samples
        .iter()
        .filter_map(|s| s.latency_ms.map(|l| l[2]))
        .fold(0.0, f64::max));
    let mut chart = time_chart(
        area,
        "Latency send -> stored, by second of the ack",
        (x_max, y_max),
        "latency (ms)",
        false,
    )?;
    for (i, (name, color)) in [("p50", BLUE), ("p90", ORANGE), ("p99", RED)]
        .into_iter()
        .enumerate()
    {
        chart
            .draw_series(LineSeries::new(
                d.samples
                    .iter()
                    .filter_map(|s| s.latency_ms.map(|l| (s.second as f64, l[i]))),
                color.stroke_width(2),
            ))?
            .label(name)
            .legend(solid(color));
    }
    legend(&mut chart, SeriesLabelPosition::UpperRight)
}

/// A shard id as its axis label: its number (`shardId-000000000003` is 3); a full id would
/// overlap its neighbours from four shards on.
fn shard_label(id: &str) -> String {
    let number = id.rsplit('-').next().unwrap_or(id).trim_start_matches('0');
    if number.is_empty() {
        "0".to_owned()
    } else {
        number.to_owned()
    }
}

fn shards<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, d: &PlotData<'_>) -> DrawResult<DB> {
    let n = d.shards.len().max(1);
    let y_max = top(d
        .shards
        .iter()
        .map(|(_, u)| u * 100.0)
        .fold(100.0, f64::max));
    let mut chart = ChartBuilder::on(area)
        .caption(
            format!(
                "Byte utilization per shard over the {:.0} s of load",
                d.duration_secs
            ),
            (FONT, 18),
        )
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(65)
        // An integer range is inclusive here: 0..n-1 is n segments.
        .build_cartesian_2d((0..n - 1).into_segmented(), 0f64..y_max)?;
    let label = |v: &SegmentValue<usize>| match v {
        SegmentValue::CenterOf(i) => d
            .shards
            .get(*i)
            .map_or_else(String::new, |(id, _)| shard_label(id)),
        _ => String::new(),
    };
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n.min(32))
        .x_label_formatter(&label)
        .x_desc("shard id (shardId-000000000NNN)")
        .y_desc("% of 1 MiB/s")
        .y_label_formatter(&num)
        .label_style((FONT, 13))
        .axis_desc_style((FONT, 14))
        .draw()?;
    chart
        .draw_series(d.shards.iter().enumerate().map(|(i, (_, u))| {
            let mut bar = Rectangle::new(
                [
                    (SegmentValue::Exact(i), 0.0),
                    (SegmentValue::Exact(i + 1), u * 100.0),
                ],
                STEEL.filled(),
            );
            bar.set_margin(0, 0, 6, 6);
            bar
        }))?
        .label("bytes stored on the shard")
        .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 24, y + 5)], STEEL.filled()));
    if d.shards.len() <= 32 {
        chart.draw_series(d.shards.iter().enumerate().map(|(i, (_, u))| {
            Text::new(
                format!("{:.0}%", u * 100.0),
                (SegmentValue::CenterOf(i), u * 100.0 + y_max * 0.01),
                TextStyle::from((FONT, 13).into_font()).pos(Pos::new(HPos::Center, VPos::Bottom)),
            )
        }))?;
    }
    chart
        .draw_series(DashedLineSeries::new(
            [(SegmentValue::Exact(0), 100.0), (SegmentValue::Last, 100.0)],
            8,
            5,
            GREY.stroke_width(2),
        ))?
        .label("capacity: 1 MiB/s per shard")
        .legend(dashed(GREY));
    legend(&mut chart, SeriesLabelPosition::UpperRight)
}
