//! `tttnn report`: plots of a run's bits per byte against k per task, before/after bars, what
//! each neighbour was worth against its rank and its distance (runs evaluated after every
//! neighbour), and runs compared with the first, paired (`--compare`), as PNG and SVG (fonts
//! bundled: no system fonts needed).
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::prelude::*;

use tttnn::records::{Comparison, Db, NeighborGain};
use tttnn::{Error, Result};

use super::compare::ResamplingArgs;
use super::ui::Printer;

/// Plot bits per byte against k per task, and before/after bars, for runs of a results database.
///
/// Runs evaluated after every neighbour (--eval-at all) also get what each neighbour was worth
/// (the change in its document's bits per byte) against its search rank and its distance.
/// --compare adds each run against the first --run, paired over their documents, with its 95%
/// interval per task (as `tttnn compare`).
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
    /// Also plot each --run against the first, paired (two --run or more).
    #[arg(long)]
    pub compare: bool,
    #[command(flatten)]
    pub resampling: ResamplingArgs,
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
    if args.compare && args.runs.len() < 2 {
        return Err(Error::setting(
            "compare",
            "--compare plots runs against the first --run: give two --run or more",
        ));
    }
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
        let gains: Vec<NeighborGain> = db
            .neighbor_gains(*run)?
            .by_doc
            .into_values()
            .flatten()
            .collect();
        if gains.is_empty() {
            p.say(format!(
                "run {run}: not evaluated after every neighbour (--eval-at all): no gain plots"
            ));
            continue;
        }
        let by_rank = write_both(&args.out, &format!("run-{run}-gain_vs_rank"), |svg, png| {
            draw_gain_by_rank(svg, *run, &gains).map_err(|e| e.to_string())?;
            draw_gain_by_rank(png, *run, &gains).map_err(|e| e.to_string())
        })?;
        let by_distance = write_both(
            &args.out,
            &format!("run-{run}-gain_vs_distance"),
            |svg, png| {
                draw_gain_by_distance(svg, *run, &gains).map_err(|e| e.to_string())?;
                draw_gain_by_distance(png, *run, &gains).map_err(|e| e.to_string())
            },
        )?;
        for path in by_rank.iter().chain(&by_distance) {
            p.out(path.display())?;
        }
    }
    if args.compare {
        let comparison = db.comparison(&args.runs, &args.resampling.resampling())?;
        let stem = format!(
            "compare-{}",
            args.runs
                .iter()
                .map(i64::to_string)
                .collect::<Vec<_>>()
                .join("-")
        );
        let written = write_both(&args.out, &stem, |svg, png| {
            draw_comparison(svg, &comparison).map_err(|e| e.to_string())?;
            draw_comparison(png, &comparison).map_err(|e| e.to_string())
        })?;
        for path in &written {
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
    let (lo, hi) = padded(curves.values().flatten().map(|p| p.1), 0.01);
    let mut chart = ChartBuilder::on(area)
        .caption(
            format!("run {run}: bits per byte vs neighbours trained on"),
            ("sans-serif", 22),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..k_max as f64, lo..hi)?;
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

/// The smallest and largest of `values`, padded by 8% (at least `min_pad`).
fn padded(values: impl Iterator<Item = f64>, min_pad: f64) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if lo > hi {
        return (-min_pad, min_pad);
    }
    let pad = ((hi - lo) * 0.08).max(min_pad);
    (lo - pad, hi + pad)
}

/// Mean change in bits per byte per search rank, a line per task and one over all neighbours.
fn draw_gain_by_rank<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    run: i64,
    gains: &[NeighborGain],
) -> std::result::Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    area.fill(&WHITE)?;
    // task → rank → (sum, count); "all" over every task.
    let mut means: BTreeMap<&str, BTreeMap<usize, (f64, usize)>> = BTreeMap::new();
    for g in gains {
        for task in [g.task.as_str(), "all"] {
            let e = means
                .entry(task)
                .or_default()
                .entry(g.rank)
                .or_insert((0.0, 0));
            e.0 += g.bpb_change;
            e.1 += 1;
        }
    }
    let lines: BTreeMap<&str, Vec<(f64, f64)>> = means
        .iter()
        .map(|(t, ranks)| {
            let line = ranks
                .iter()
                .map(|(r, (sum, n))| (*r as f64, sum / *n as f64))
                .collect();
            (*t, line)
        })
        .collect();
    let rank_max = gains.iter().map(|g| g.rank).max().unwrap_or(1).max(2) as f64;
    let (lo, hi) = padded(lines.values().flatten().map(|p| p.1).chain([0.0]), 1e-4);
    let mut chart = ChartBuilder::on(area)
        .caption(
            format!("run {run}: change in bits per byte per neighbour, by search rank"),
            ("sans-serif", 22),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0.5f64..rank_max + 0.5, lo..hi)?;
    chart
        .configure_mesh()
        .x_desc("search rank (1: nearest)")
        .y_desc("mean change in bits per byte (negative helps)")
        .label_style(("sans-serif", 14))
        .draw()?;
    chart.draw_series(LineSeries::new(
        vec![(0.5, 0.0), (rank_max + 0.5, 0.0)],
        BLACK.mix(0.4),
    ))?;
    for (i, (task, line)) in lines.iter().enumerate() {
        let c = color(i);
        let width = if *task == "all" { 4 } else { 2 };
        chart
            .draw_series(LineSeries::new(line.clone(), c.stroke_width(width)))?
            .label(task.to_string())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(3)));
        chart.draw_series(line.iter().map(|&p| Circle::new(p, 3, c.filled())))?;
    }
    legend(&mut chart)
}

/// Each trained neighbour's change in bits per byte against its distance, coloured by task.
fn draw_gain_by_distance<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    run: i64,
    gains: &[NeighborGain],
) -> std::result::Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    area.fill(&WHITE)?;
    let (x_lo, x_hi) = padded(gains.iter().map(|g| g.distance), 1e-3);
    let (lo, hi) = padded(gains.iter().map(|g| g.bpb_change).chain([0.0]), 1e-4);
    let mut chart = ChartBuilder::on(area)
        .caption(
            format!("run {run}: change in bits per byte per neighbour, by distance"),
            ("sans-serif", 22),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(x_lo..x_hi, lo..hi)?;
    chart
        .configure_mesh()
        .x_desc("distance from the document (L2)")
        .y_desc("change in bits per byte (negative helps)")
        .label_style(("sans-serif", 14))
        .draw()?;
    chart.draw_series(LineSeries::new(
        vec![(x_lo, 0.0), (x_hi, 0.0)],
        BLACK.mix(0.4),
    ))?;
    let tasks: Vec<&str> = gains
        .iter()
        .map(|g| g.task.as_str())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    for (i, task) in tasks.iter().enumerate() {
        let c = color(i);
        chart
            .draw_series(
                gains
                    .iter()
                    .filter(|g| g.task == *task)
                    .map(|g| Circle::new((g.distance, g.bpb_change), 3, c.filled())),
            )?
            .label(task.to_string())
            .legend(move |(x, y)| Circle::new((x + 8, y), 4, c.filled()));
    }
    legend(&mut chart)
}

/// Each run's mean change in bits per byte against the baseline per task, with its 95% interval.
fn draw_comparison<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    comparison: &Comparison,
) -> std::result::Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    area.fill(&WHITE)?;
    let rows = &comparison.rows;
    let mut tasks: Vec<&str> = Vec::new();
    let mut runs: Vec<(i64, String)> = Vec::new();
    for r in rows {
        if !tasks.contains(&r.task.as_str()) {
            tasks.push(&r.task);
        }
        if !runs.iter().any(|(id, _)| *id == r.run) {
            let label = match &r.name {
                Some(name) => format!("run {} ({name})", r.run),
                None => format!("run {} ({})", r.run, r.method),
            };
            runs.push((r.run, label));
        }
    }
    let n = tasks.len().max(1) as f64;
    let (lo, hi) = padded(
        rows.iter()
            .flat_map(|r| [r.estimate.ci_low, r.estimate.ci_high])
            .chain([0.0]),
        1e-4,
    );
    let baseline = rows.first().map(|r| r.baseline).unwrap_or_default();
    let mut chart = ChartBuilder::on(area)
        .caption(
            format!(
                "against run {baseline}: paired change in bits per byte, 95% intervals \
                 ({} resamples, seed {})",
                comparison.resampling.resamples, comparison.resampling.seed
            ),
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d((0..(n as i32 - 1)).into_segmented(), lo..hi)?
        // Points sit inside a task's segment, one place per run: a continuous x over the same
        // pixels (segment i is [i, i + 1)).
        .set_secondary_coord(0f64..n, lo..hi);
    let names: Vec<String> = tasks
        .iter()
        .map(|t| match *t {
            "pile_all" => t.to_string(),
            t => t.trim_start_matches("pile_").to_string(),
        })
        .collect();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(tasks.len())
        .x_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) | SegmentValue::Exact(i) => {
                names.get(*i as usize).cloned().unwrap_or_default()
            }
            SegmentValue::Last => String::new(),
        })
        .y_desc("change in bits per byte (negative: better than the baseline)")
        .label_style(("sans-serif", 13))
        .draw()?;
    chart.draw_secondary_series(LineSeries::new(vec![(0.0, 0.0), (n, 0.0)], BLACK.mix(0.4)))?;
    let m = runs.len() as f64;
    for (q, (run, label)) in runs.iter().enumerate() {
        let c = color(q + 1);
        let offset = (q as f64 + 1.0) / (m + 1.0);
        let mine: Vec<(f64, &tttnn::stats::Estimate)> = rows
            .iter()
            .filter(|r| r.run == *run)
            .filter_map(|r| {
                let t = tasks.iter().position(|t| *t == r.task)?;
                Some((t as f64 + offset, &r.estimate))
            })
            .collect();
        chart.draw_secondary_series(mine.iter().map(|(x, e)| {
            PathElement::new(vec![(*x, e.ci_low), (*x, e.ci_high)], c.stroke_width(2))
        }))?;
        chart
            .draw_secondary_series(
                mine.iter()
                    .map(|(x, e)| Circle::new((*x, e.mean), 4, c.filled())),
            )?
            .label(label.clone())
            .legend(move |(x, y)| Circle::new((x + 8, y), 4, c.filled()));
    }
    legend(&mut chart)
}
