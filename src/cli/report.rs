//! `tttnn report`: plots of a run's bits per byte against k per task, and before/after bars,
//! as PNG and SVG (fonts bundled: no system fonts needed).
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::prelude::*;

use tttnn::records::Db;
use tttnn::{Error, Result};

use super::ui::Printer;

/// Plot bits per byte against k per task, and before/after bars, for runs of a results database.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Results database.
    #[arg(long, env = "TTTNN_DB", default_value = super::DEFAULT_DB)]
    pub db: PathBuf,
    /// Runs to plot [default: every run].
    #[arg(long = "run", value_name = "RUN_ID")]
    pub runs: Vec<i64>,
    /// Directory for the plots (created if missing).
    #[arg(long)]
    pub out: PathBuf,
}

/// Bits per byte per task and k of one run.
type Curves = BTreeMap<String, Vec<(i64, f64)>>;

/// The runs' `bpb_vs_k` curves, per run and task.
fn load(db: &Db, runs: &[i64]) -> Result<BTreeMap<i64, Curves>> {
    let mut out: BTreeMap<i64, Curves> = BTreeMap::new();
    for point in db.bpb_vs_k(runs)? {
        out.entry(point.run_id)
            .or_default()
            .entry(point.task)
            .or_default()
            .push((point.k, point.bits_per_byte));
    }
    Ok(out)
}

/// Runs the subcommand: prints each written path.
pub fn run(args: Args, p: &Printer) -> Result<()> {
    let db = Db::open_read_only(&args.db)?;
    let runs = load(&db, &args.runs)?;
    if runs.is_empty() {
        return Err(Error::bad_file(
            &args.db,
            "no complete documents to plot (is the run finished? --run ids right?)",
        ));
    }
    std::fs::create_dir_all(&args.out).map_err(|e| Error::io(&args.out, e))?;
    // ab_glyph needs the font registered once; DejaVu ships inside the binary.
    let _ =
        plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular());
    for (run, curves) in &runs {
        let written = write_both(&args.out, &format!("run-{run}-bpb_vs_k"), |svg, png| {
            draw_curves(svg, *run, curves).map_err(|e| e.to_string())?;
            draw_curves(png, *run, curves).map_err(|e| e.to_string())
        })?;
        let bars = write_both(&args.out, &format!("run-{run}-before_after"), |svg, png| {
            draw_bars(svg, *run, curves).map_err(|e| e.to_string())?;
            draw_bars(png, *run, curves).map_err(|e| e.to_string())
        })?;
        for path in written.iter().chain(&bars) {
            p.out(path.display())?;
        }
    }
    Ok(())
}

type Svg<'a> = DrawingArea<SVGBackend<'a>, Shift>;
type Png<'a> = DrawingArea<BitMapBackend<'a>, Shift>;

fn write_both(
    dir: &Path,
    stem: &str,
    draw: impl FnOnce(&Svg, &Png) -> std::result::Result<(), String>,
) -> Result<Vec<PathBuf>> {
    let svg_path = dir.join(format!("{stem}.svg"));
    let png_path = dir.join(format!("{stem}.png"));
    let size = (960, 600);
    {
        let svg = SVGBackend::new(&svg_path, size).into_drawing_area();
        let png = BitMapBackend::new(&png_path, size).into_drawing_area();
        draw(&svg, &png).map_err(|e| Error::plot(dir.join(stem), e))?;
        svg.present().map_err(|e| Error::plot(&svg_path, e))?;
        png.present().map_err(|e| Error::plot(&png_path, e))?;
    }
    Ok(vec![png_path, svg_path])
}

fn color(i: usize) -> RGBColor {
    const PALETTE: [RGBColor; 10] = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(127, 127, 127),
        RGBColor(188, 189, 34),
        RGBColor(23, 190, 207),
    ];
    PALETTE[i % PALETTE.len()]
}

fn legend<'a, DB: DrawingBackend + 'a, CT: plotters::coord::CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
) -> std::result::Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 13))
        .position(SeriesLabelPosition::UpperRight)
        .draw()
}

fn draw_curves<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    run: i64,
    curves: &Curves,
) -> std::result::Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    area.fill(&WHITE)?;
    let k_max = curves
        .values()
        .flatten()
        .map(|p| p.0)
        .max()
        .unwrap_or(1)
        .max(1);
    let (lo, hi) = curves
        .values()
        .flatten()
        .fold((f64::MAX, f64::MIN), |(lo, hi), p| {
            (lo.min(p.1), hi.max(p.1))
        });
    let pad = ((hi - lo) * 0.08).max(0.01);
    let mut chart = ChartBuilder::on(area)
        .caption(
            format!("run {run}: bits per byte vs neighbours trained on"),
            ("sans-serif", 22),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..k_max as f64, (lo - pad)..(hi + pad))?;
    chart
        .configure_mesh()
        .x_desc("k (neighbours)")
        .y_desc("bits per byte")
        .label_style(("sans-serif", 14))
        .draw()?;
    for (i, (task, points)) in curves.iter().enumerate() {
        let c = color(i);
        let pts: Vec<(f64, f64)> = points.iter().map(|&(k, b)| (k as f64, b)).collect();
        let style = if task == "pile_all" {
            c.stroke_width(4)
        } else {
            c.stroke_width(2)
        };
        chart
            .draw_series(LineSeries::new(pts.clone(), style))?
            .label(task.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(3)));
        chart.draw_series(pts.into_iter().map(|p| Circle::new(p, 3, c.filled())))?;
    }
    legend(&mut chart)
}

fn draw_bars<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    run: i64,
    curves: &Curves,
) -> std::result::Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    area.fill(&WHITE)?;
    let tasks: Vec<(&String, f64, f64)> = curves
        .iter()
        .filter_map(|(t, p)| Some((t, p.first()?.1, p.last()?.1)))
        .collect();
    let n = tasks.len().max(1);
    let hi = tasks.iter().map(|t| t.1.max(t.2)).fold(0.0, f64::max) * 1.15;
    let names: Vec<String> = tasks
        .iter()
        .map(|t| t.0.trim_start_matches("pile_").to_string())
        .collect();
    let mut chart = ChartBuilder::on(area)
        .caption(
            format!("run {run}: bits per byte before (k=0) and after"),
            ("sans-serif", 22),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((0..(n as i32 - 1)).into_segmented(), 0f64..hi.max(0.1))?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n)
        .x_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) | SegmentValue::Exact(i) => {
                names.get(*i as usize).cloned().unwrap_or_default()
            }
            SegmentValue::Last => String::new(),
        })
        .y_desc("bits per byte")
        .label_style(("sans-serif", 13))
        .draw()?;
    let before = color(0);
    let after = color(1);
    chart
        .draw_series(tasks.iter().enumerate().map(|(i, t)| {
            let i = i as i32;
            Rectangle::new(
                [
                    (SegmentValue::Exact(i), 0.0),
                    (SegmentValue::CenterOf(i), t.1),
                ],
                before.filled(),
            )
        }))?
        .label("before (k=0)")
        .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 14, y + 5)], before.filled()));
    chart
        .draw_series(tasks.iter().enumerate().map(|(i, t)| {
            let i = i as i32;
            Rectangle::new(
                [
                    (SegmentValue::CenterOf(i), 0.0),
                    (SegmentValue::Exact(i + 1), t.2),
                ],
                after.filled(),
            )
        }))?
        .label("after")
        .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 14, y + 5)], after.filled()));
    legend(&mut chart)
}
