//! `report.html`: a build's summary as a page a person would rather look at. One file, inline
//! CSS and SVG, no script and no external asset, so it opens from the output folder anywhere.
//! The daemon serves the same page at `/`, headed by what it is doing now. Counts, table names,
//! versions and bounded error texts only: never a value of a data row.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use crate::pipeline::summary::Summary;
use crate::telemetry::status::Status;

/// The file a build writes beside `summary.json`.
pub(crate) const REPORT_FILE: &str = "report.html";

const COLORS: [(&str, &str); 4] =
    [("eye_gaze", "#4e79a7"), ("reflacx", "#f28e2b"), ("both", "#59a14f"), ("neither", "#bab0ac")];

/// The page of a build; with `live`, headed by the daemon's status.
pub(crate) fn render(summary: &Summary, live: Option<&Status>) -> String {
    let mut page = String::with_capacity(16 * 1024);
    page.push_str(HEAD);
    if let Some(status) = live {
        live_section(&mut page, status);
    }
    headline(&mut page, summary);
    composition(&mut page, summary);
    link_rate(&mut page, summary);
    tables(&mut page, summary);
    datasets(&mut page, summary);
    page.push_str("</body></html>\n");
    page
}

/// The daemon's page before its first build: the status alone.
fn render_status_only(status: &Status) -> String {
    let mut page = String::from(HEAD);
    live_section(&mut page, status);
    page.push_str("<p>No build has finished yet.</p></body></html>\n");
    page
}

/// The daemon's `/`: the last build's report headed by `status`, or the status alone.
pub(crate) fn live_page(status: &Status) -> String {
    let last = last_summary().lock().map(|l| l.clone()).unwrap_or_default();
    match last {
        Some(summary) => render(&summary, Some(status)),
        None => render_status_only(status),
    }
}

/// The last build's summary, for the daemon's `/`.
pub(crate) fn last_summary() -> &'static Mutex<Option<Arc<Summary>>> {
    static LAST: Mutex<Option<Arc<Summary>>> = Mutex::new(None);
    &LAST
}

const HEAD: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>MIMIC-Eye build report</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:24px auto;max-width:1000px;color:#222;padding:0 16px}
h1{font-size:22px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:8px 0}td,th{padding:3px 10px;border-bottom:1px solid #eee;text-align:right}
th:first-child,td:first-child{text-align:left}.big td{font-size:20px;font-weight:600}
.bad{color:#b00}.muted{color:#777}.legend span{display:inline-block;margin-right:14px}
.sw{display:inline-block;width:10px;height:10px;margin-right:4px}
</style></head><body>
<h1>MIMIC-Eye build report</h1>
"#;

/// `&`, `<`, `>`, `"` and `'` as entities.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn live_section(page: &mut String, s: &Status) {
    let phase = serde_json::to_value(s.phase).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
    let _ = write!(
        page,
        "<h2>Now</h2><table><tr><td>phase</td><td id=\"phase\">{}</td></tr><tr><td>builds since start</td><td>{}</td></tr>\
         <tr><td>pending inputs</td><td id=\"pending\">{}</td></tr>",
        escape(&phase),
        s.build,
        s.pending_inputs.count
    );
    if s.pending_inputs.count > 0 {
        let _ = write!(page, "<tr><td>oldest pending</td><td>{} s</td></tr>", s.pending_inputs.oldest_seconds);
        for path in &s.pending_inputs.first {
            let _ = write!(page, "<tr><td colspan=\"2\" class=\"muted\">{}</td></tr>", escape(path));
        }
    }
    for (table, p) in &s.tables {
        let pct = (p.bytes_done * 100).checked_div(p.bytes_total).unwrap_or(0);
        let _ = write!(page, "<tr><td>reading {}</td><td>{pct} %</td></tr>", escape(table));
    }
    page.push_str("</table>\n");
}

fn headline(page: &mut String, s: &Summary) {
    let _ = write!(
        page,
        "<p class=\"muted\">{} {}, profile {}, cohort {} ({} patients), window {} days; built in \
         <span id=\"duration\">{:.1}</span> s; peak memory {:.0} MiB</p>",
        s.program.name,
        s.program.version,
        s.profile.as_str(),
        escape(s.cohort.kind),
        s.cohort.size,
        s.window_days,
        s.duration_seconds,
        s.peak_rss_bytes as f64 / (1024.0 * 1024.0)
    );
    page.push_str(
        "<table class=\"big\"><tr><th>patients</th><th>ED stays</th><th>images</th><th>linked images</th></tr><tr>",
    );
    for (id, n) in
        [("patients", s.patients), ("stays", s.stays), ("images", s.images), ("linked_images", s.linked_images)]
    {
        let _ = write!(page, "<td id=\"{id}\">{n}</td>");
    }
    page.push_str("</tr></table>\n");
    let problems = [
        ("failed", s.failed.iter().map(|(t, e)| format!("{}: {}", escape(t), escape(e))).collect::<Vec<_>>()),
        ("still being written (previous output kept)", s.pending.iter().map(|t| escape(t)).collect()),
        ("missing datasets", s.missing_datasets.iter().map(|d| escape(d)).collect()),
    ];
    for (what, items) in problems.iter().filter(|(_, items)| !items.is_empty()) {
        let _ = writeln!(page, "<p class=\"bad\"><b>{what}:</b> {}</p>", items.join("; "));
    }
}

/// A horizontal bar of `segments` (label, count, colour) scaled to `max`.
fn bar(segments: &[(&str, usize, &str)], max: usize, width: u32) -> String {
    let mut svg = format!("<svg width=\"{width}\" height=\"16\" role=\"img\">");
    let mut x = 0.0;
    for (label, n, color) in segments.iter().filter(|s| s.1 > 0) {
        let w = *n as f64 / max.max(1) as f64 * f64::from(width);
        let _ = write!(svg, "<rect x=\"{x:.1}\" y=\"0\" width=\"{w:.1}\" height=\"16\" fill=\"{color}\"><title>{label}: {n}</title></rect>");
        x += w;
    }
    svg.push_str("</svg>");
    svg
}

fn composition(page: &mut String, s: &Summary) {
    page.push_str("<h2>Cohort composition</h2><p class=\"legend\">");
    for (name, color) in COLORS {
        let _ = write!(page, "<span><i class=\"sw\" style=\"background:{color}\"></i>{}</span>", source_title(name));
    }
    page.push_str("</p><table><tr><th>view position</th>");
    for (name, _) in COLORS {
        let _ = write!(page, "<th>{}</th>", source_title(name));
    }
    page.push_str("<th>images</th><th></th></tr>");
    let max = s.images_by_view.values().map(|m| m.values().sum::<usize>()).max().unwrap_or(0);
    for (view, by_source) in &s.images_by_view {
        let _ = write!(page, "<tr><td>{}</td>", escape(view));
        let mut segments = Vec::new();
        for (name, color) in COLORS {
            let n = by_source.get(name).copied().unwrap_or(0);
            let _ = write!(page, "<td id=\"view-{}-{name}\">{n}</td>", id_part(view));
            segments.push((source_title(name), n, color));
        }
        let total: usize = by_source.values().sum();
        let _ = write!(page, "<td>{total}</td><td>{}</td></tr>", bar(&segments, max, 300));
    }
    let _ = writeln!(
        page,
        "</table><p>Patients: EyeGaze {}, REFLACX {}, both {}.</p>",
        s.eye_gaze.patients, s.reflacx.patients, s.both.patients
    );
}

fn source_title(name: &str) -> &'static str {
    match name {
        "eye_gaze" => "EyeGaze only",
        "reflacx" => "REFLACX only",
        "both" => "both",
        _ => "neither",
    }
}

/// A view label as part of an element id (`not given` → `not-given`).
fn id_part(text: &str) -> String {
    text.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect()
}

fn link_rate(page: &mut String, s: &Summary) {
    let r = &s.links_by_rule;
    let total = r.within_stay + r.within_window + r.unlinked;
    let pct = |n: usize| if total > 0 { n as f64 * 100.0 / total as f64 } else { 0.0 };
    let _ = write!(
        page,
        "<h2>Link rate</h2><p><b id=\"link-rate\">{:.1}</b> % of the images are linked to an ED stay.</p><table>\
         <tr><th>rule</th><th>images</th><th>%</th><th></th></tr>",
        pct(r.within_stay + r.within_window)
    );
    let rows = [
        ("within-stay", "taken during the stay", r.within_stay, "#59a14f"),
        ("within-window", &*format!("nearest stay within {} days", s.window_days), r.within_window, "#edc948"),
        ("unlinked", "no stay", r.unlinked, "#e15759"),
    ];
    for (id, label, n, color) in rows {
        let _ = write!(
            page,
            "<tr><td>{label}</td><td id=\"{id}\">{n}</td><td>{:.1}</td><td>{}</td></tr>",
            pct(n),
            bar(&[(label, n, color)], total, 300)
        );
    }
    page.push_str("</table>\n");
}

fn tables(page: &mut String, s: &Summary) {
    let _ = write!(
        page,
        "<h2>Rows per table</h2><p class=\"muted\">{} table jobs, {} unchanged since the last build (not read). \
         Rejected rows are kept in <code>.mimic-eye/rejects/</code>.</p>\
         <table><tr><th>table</th><th>read</th><th>written</th><th>outside the cohort</th><th>rejected</th><th></th></tr>",
        s.table_jobs, s.unchanged_tables
    );
    for (table, c) in &s.tables {
        let class = if c.rejected > 0 { " class=\"bad\"" } else { "" };
        let segments = [
            ("written", c.written as usize, "#4e79a7"),
            ("outside the cohort", c.outside_cohort as usize, "#bab0ac"),
            ("rejected", c.rejected as usize, "#e15759"),
        ];
        let _ = write!(
            page,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td{class}>{}</td><td>{}</td></tr>",
            escape(table),
            c.read,
            c.written,
            c.outside_cohort,
            c.rejected,
            bar(&segments, c.read as usize, 200)
        );
    }
    page.push_str("</table>");
    if !s.rejects_by_reason.is_empty() {
        page.push_str("<p>Rejected this build, by reason: ");
        let reasons: Vec<String> = s.rejects_by_reason.iter().map(|(r, n)| format!("{} {n}", r.label())).collect();
        page.push_str(&reasons.join(", "));
        page.push_str("</p>");
    }
    page.push('\n');
}

fn datasets(page: &mut String, s: &Summary) {
    page.push_str(
        "<h2>Datasets</h2><table><tr><th>dataset</th><th>version</th><th>SHA256SUMS.txt</th><th>files checked</th><th>newer version</th></tr>",
    );
    for (name, p) in &s.datasets {
        let class = if p.sha256sums == "mismatch" { " class=\"bad\"" } else { "" };
        let _ = write!(
            page,
            "<tr><td>{}</td><td>{}</td><td{class} id=\"sums-{}\">{}</td><td>{}</td><td>{}</td></tr>",
            escape(name),
            escape(p.version.as_deref().unwrap_or("none")),
            id_part(name),
            p.sha256sums,
            p.checked,
            escape(p.newer_version.as_deref().unwrap_or(""))
        );
    }
    page.push_str("</table>\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_and_bars_scale() {
        assert_eq!(escape("<a href='x'>&\"</a>"), "&lt;a href=&#39;x&#39;&gt;&amp;&quot;&lt;/a&gt;");
        let svg = bar(&[("a", 1, "#000"), ("b", 3, "#111"), ("c", 0, "#222")], 8, 80);
        assert!(svg.contains("width=\"10.0\"") && svg.contains("x=\"10.0\" y=\"0\" width=\"30.0\""), "{svg}");
        assert!(!svg.contains("c: 0"), "{svg}");
        assert_eq!(id_part("not given"), "not-given");
    }
}
